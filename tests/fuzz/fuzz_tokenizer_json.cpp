// tokenizer.json (byte-level BPE: normalizer, pre_tokenizer, model, added_tokens, post_processor)
// through load_tokenizer, as a model directory holds it.
// Input parts: tokenizer.json | tokenizer_config.json (empty = absent) | text to encode.
#include "data/tokenizer/tokenizer.h"
#include "tests/fuzz/exercise_tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  namespace fz = qtrain::fuzz;
  const auto parts = fz::split_parts(data, size, 3);
  const auto dir = fz::fresh_dir("tokenizer_json");
  fz::write_file(dir / "tokenizer.json", parts[0]);
  if (!parts[1].empty()) fz::write_file(dir / "tokenizer_config.json", parts[1]);
  std::unique_ptr<qtrain::Tokenizer> tok;
  fz::expect_clean_errors({dir.string()}, [&] { tok = qtrain::load_tokenizer(dir); });
  if (tok) fz::exercise_tokenizer(*tok, parts[2]);
  return 0;
}
