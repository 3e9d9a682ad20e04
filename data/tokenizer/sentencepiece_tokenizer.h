// The sentencepiece backend (tokenizer.model: Llama 1/2, Mistral, the llama2.c models), through the
// sentencepiece library, with the Hugging Face LlamaTokenizer policy around it.
#pragma once

#include <filesystem>
#include <memory>

#include "data/tokenizer/tokenizer.h"
#include "data/tokenizer/tokenizer_config.h"

namespace qtrain {

// Throws InputError naming model_file when it cannot be read or is not a sentencepiece model.
std::unique_ptr<Tokenizer> make_sentencepiece_tokenizer(const std::filesystem::path& model_file,
                                                        const TokenizerConfig& config);

}  // namespace qtrain
