// load_tokenizer: which files of a model directory define its tokenizer, in transformers' order.
#include "data/tokenizer/tokenizer.h"

#include "data/tokenizer/bpe_tokenizer.h"
#include "data/error.h"
#include "data/tokenizer/sentencepiece_tokenizer.h"
#include "data/tokenizer/tokenizer_config.h"

namespace qtrain {

std::unique_ptr<Tokenizer> load_tokenizer(const std::filesystem::path& model_dir) {
  namespace fs = std::filesystem;
  if (!fs::is_directory(model_dir)) throw InputError(model_dir.string() + ": not a directory (expected a model directory)");
  const TokenizerConfig config = read_tokenizer_config(model_dir);
  const fs::path json = model_dir / "tokenizer.json", vocab = model_dir / "vocab.json",
                 merges = model_dir / "merges.txt", spm = model_dir / "tokenizer.model";

  if (fs::exists(json)) {
    const nlohmann::json j = read_json_file(json);
    // Llama 2 / Mistral ship a sentencepiece-style tokenizer.json next to tokenizer.model; the
    // model file is the original, so it serves them.
    if (is_byte_level_bpe(j) || !fs::exists(spm)) return make_bpe_tokenizer_from_json(json, j, config);
  }
  if (fs::exists(vocab) || fs::exists(merges)) {
    if (!fs::exists(vocab)) throw InputError(vocab.string() + ": missing (merges.txt needs vocab.json beside it)");
    if (!fs::exists(merges)) throw InputError(merges.string() + ": missing (vocab.json needs merges.txt beside it)");
    return make_bpe_tokenizer_from_files(vocab, merges, config);
  }
  if (fs::exists(spm)) return make_sentencepiece_tokenizer(spm, config);
  throw InputError(model_dir.string() +
                   ": no tokenizer found (expected tokenizer.json, vocab.json + merges.txt, or tokenizer.model)");
}

}  // namespace qtrain
