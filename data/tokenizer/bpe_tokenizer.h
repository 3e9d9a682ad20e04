// The byte-level BPE backend (GPT-2, Llama 3, Qwen2/3): from a tokenizer.json, or from the GPT-2
// style vocab.json + merges.txt pair.
#pragma once

#include <filesystem>
#include <memory>

#include <nlohmann/json.hpp>

#include "data/tokenizer/tokenizer.h"
#include "data/tokenizer/tokenizer_config.h"

namespace qtrain {

// True when the parsed tokenizer.json describes a byte-level BPE pipeline (a ByteLevel
// pre-tokenizer); false for the sentencepiece-style ones (Metaspace / Prepend+Replace).
bool is_byte_level_bpe(const nlohmann::json& tokenizer_json);

// `json` is the parsed content of `path`. Throws InputError naming the file and key for anything
// malformed or outside what qtrain implements (the message says what is supported).
std::unique_ptr<Tokenizer> make_bpe_tokenizer_from_json(const std::filesystem::path& path, const nlohmann::json& json,
                                                        const TokenizerConfig& config);

// vocab.json + merges.txt; tokenizer_config.json's tokenizer_class picks the pre-tokenizer regex
// and normalizer (Qwen2Tokenizer: Qwen2 pattern + NFC; anything else: GPT-2 pattern).
std::unique_ptr<Tokenizer> make_bpe_tokenizer_from_files(const std::filesystem::path& vocab_json,
                                                         const std::filesystem::path& merges_txt,
                                                         const TokenizerConfig& config);

}  // namespace qtrain
