// The HDF5 token cache reader (read_token_cache, data/dataset/token_cache.cpp). The input is the
// file. libhdf5 is a system library and not instrumented, so coverage guidance stops at its API:
// ASan sees qtrain's reader, and a crash inside the library still fails the run.
// Seeds come from the writer itself: with QTRAIN_FUZZ_MAKE_SEEDS=DIR the binary writes a few real
// cache files there and exits (scripts/fuzz.sh does this before fuzzing).
#include "data/dataset/token_cache.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

const std::string kKey = "fuzz-seed-key tokenizer=abc data=def format=alpaca";

void make_seeds(const std::filesystem::path& dir) {
  std::filesystem::create_directories(dir);
  qtrain::CachedTokens empty;
  qtrain::write_token_cache(dir / "empty.h5", kKey, empty);
  qtrain::CachedTokens c;
  const std::vector<std::vector<int32_t>> examples = {{1, 450, 4996, 17354}, {1, 2}, {1, 3, 5, 7, 11, 13, 17, 2}};
  for (const auto& e : examples) {
    std::vector<uint8_t> mask(e.size());
    for (size_t i = 0; i < e.size(); ++i) mask[i] = i >= e.size() / 2;
    c.examples.add(e, mask);
  }
  c.examples.pad_id = 0;
  c.counts.records = 4;
  c.counts.skipped = 1;
  c.counts.examples = 3;
  c.counts.tokens = 14;
  c.counts.label_tokens = 8;
  c.counts.skipped_messages = {"train.jsonl:3: malformed JSON line"};
  qtrain::write_token_cache(dir / "three.h5", kKey, c);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) { return qtrain::fuzz::make_seeds_if_asked(make_seeds); }

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  namespace fz = qtrain::fuzz;
  const auto file = fz::scratch_dir() / "cache.h5";
  fz::write_file(file, std::string_view(reinterpret_cast<const char*>(data), size));
  fz::expect_clean_errors({file.string()}, [&] {
    std::string why;
    const auto c = qtrain::read_token_cache(file, kKey, &why);
    if (!c) return;
    // What the Loader does with a cache it accepted.
    int64_t total = 0;
    for (int64_t i = 0; i < c->examples.size(); ++i) {
      const auto v = c->examples.at(i);
      for (size_t k = 0; k < v.ids.size(); ++k) total += v.ids[k] + v.trained[k];
    }
    (void)total;
  });
  return 0;
}
