// tokenizer.model: the sentencepiece ModelProto, first through qtrain's own protobuf walker (which
// rewrites two normalizer flags), then through libsentencepiece (a system library, not instrumented:
// ASan sees qtrain's side; a crash inside the library still fails the run).
// Input parts: tokenizer.model | tokenizer_config.json (empty = absent) | text to encode.
#include "data/tokenizer/tokenizer.h"
#include "tests/fuzz/exercise_tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  namespace fz = qtrain::fuzz;
  const auto parts = fz::split_parts(data, size, 3);
  const auto dir = fz::fresh_dir("sentencepiece");
  fz::write_file(dir / "tokenizer.model", parts[0]);
  if (!parts[1].empty()) fz::write_file(dir / "tokenizer_config.json", parts[1]);
  std::unique_ptr<qtrain::Tokenizer> tok;
  fz::expect_clean_errors({dir.string()}, [&] { tok = qtrain::load_tokenizer(dir); });
  if (tok) fz::exercise_tokenizer(*tok, parts[2]);
  return 0;
}
