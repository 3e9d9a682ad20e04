// One tokenizer interface for every model family, built from a model directory the way transformers
// picks a tokenizer (load_tokenizer below). Encoding follows the Hugging Face semantics:
//   - added / special tokens written in the text (e.g. "<|im_start|>", "</s>") are always matched
//     as single tokens, before the model sees the text; `add_special` only controls the tokens the
//     post-processor adds around the text (BOS for Llama, nothing for GPT-2 / Qwen2, ...);
//   - decode turns ids back into the exact bytes they stand for (no clean-up of spaces, no
//     replacement of a UTF-8 sequence cut in the middle), so decode(encode(t)) == t.
// A Tokenizer owns its caches and is safe to use from several threads at once.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace qtrain {

// The ids of the tokens with a role, as tokenizer_config.json / special_tokens_map.json name them.
struct SpecialIds {
  std::optional<int32_t> bos, eos, pad, unk;
};

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Throws InputError when text is not valid UTF-8 (naming the byte offset).
  virtual std::vector<int32_t> encode(std::string_view text, bool add_special) const = 0;
  // Special tokens (the ones marked "special" in the tokenizer files) are dropped when skip_special.
  // Throws InputError for an id outside [0, vocab_size()).
  virtual std::string decode(std::span<const int32_t> ids, bool skip_special) const = 0;

  // One more than the largest id, added tokens included (what the embedding must cover).
  virtual int32_t vocab_size() const = 0;
  // The token's string as the tokenizer files spell it ("▁Hello", "Ġworld", "<0x0A>", "<s>").
  virtual std::optional<int32_t> token_to_id(std::string_view token) const = 0;
  virtual std::string id_to_token(int32_t id) const = 0;  // throws InputError when out of range
  virtual bool is_special(int32_t id) const = 0;

  // Short description for logs and `qtrain tokenize --info`: "sentencepiece (legacy, 32000 pieces)".
  virtual std::string describe() const = 0;

  const SpecialIds& special_ids() const { return special_; }
  std::optional<int32_t> bos_id() const { return special_.bos; }
  std::optional<int32_t> eos_id() const { return special_.eos; }
  std::optional<int32_t> pad_id() const { return special_.pad; }
  std::optional<int32_t> unk_id() const { return special_.unk; }

 protected:
  SpecialIds special_;
};

// Picks like transformers: tokenizer.json (byte-level BPE: Llama 3, Qwen2/3) >
// vocab.json + merges.txt (GPT-2 style) > tokenizer.model (sentencepiece: Llama 1/2, Mistral).
// A tokenizer.json holding a sentencepiece-style pipeline (Metaspace / Prepend normalizer) is
// served by tokenizer.model when that file is present. tokenizer_config.json,
// special_tokens_map.json and added_tokens.json refine each choice. Throws InputError naming the
// file when none is usable or one is malformed.
std::unique_ptr<Tokenizer> load_tokenizer(const std::filesystem::path& model_dir);

}  // namespace qtrain
