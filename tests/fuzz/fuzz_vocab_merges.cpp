// The GPT-2 pair vocab.json + merges.txt with the side files that refine it (tokenizer_config.json,
// added_tokens.json, special_tokens_map.json), through load_tokenizer.
// Input parts: vocab.json | merges.txt | tokenizer_config.json | added_tokens.json |
// special_tokens_map.json | text to encode. An empty side file is absent.
#include "data/tokenizer/tokenizer.h"
#include "tests/fuzz/exercise_tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  namespace fz = qtrain::fuzz;
  const auto parts = fz::split_parts(data, size, 6);
  const auto dir = fz::fresh_dir("vocab_merges");
  fz::write_file(dir / "vocab.json", parts[0]);
  fz::write_file(dir / "merges.txt", parts[1]);
  const char* side[] = {"tokenizer_config.json", "added_tokens.json", "special_tokens_map.json"};
  for (int i = 0; i < 3; ++i)
    if (!parts[2 + i].empty()) fz::write_file(dir / side[i], parts[2 + i]);
  std::unique_ptr<qtrain::Tokenizer> tok;
  fz::expect_clean_errors({dir.string()}, [&] { tok = qtrain::load_tokenizer(dir); });
  if (tok) fz::exercise_tokenizer(*tok, parts[5]);
  return 0;
}
