// The HDF5 token cache: round trip, key mismatch (stale), truncated (partial) and garbage (corrupt)
// files detected, no temporary left behind; and through build_dataset: a second run hits the cache and
// gives identical tokens, a changed data file or setting misses, a corrupt cache is rebuilt with a warning.
#include <gtest/gtest.h>

#include <fstream>

#include "data/dataset/dataset.h"
#include "data/dataset/token_cache.h"
#include "tests/scratch_dir.h"

namespace fs = std::filesystem;
using namespace qtrain;

namespace {

const fs::path kShared = QTRAIN_SHARED_DATA;
const fs::path kModel = kShared / "models" / "llama2c-xs-tok512-hf";

class TokenCacheTest : public ::testing::Test {
 protected:
  static CachedTokens sample() {
    CachedTokens c;
    c.examples.add(std::vector<int32_t>{1, 5, 9}, std::vector<uint8_t>{0, 1, 1});
    c.examples.add(std::vector<int32_t>{1, 7}, std::vector<uint8_t>{0, 1});
    c.counts.records = 3;
    c.counts.examples = 2;
    c.counts.skipped = 1;
    c.counts.skipped_messages = {"f.jsonl:2: malformed JSON line"};
    c.examples.pad_id = 2;
    return c;
  }
  size_t files_in_dir() const {
    size_t n = 0;
    for ([[maybe_unused]] const auto& e : fs::directory_iterator(dir_)) ++n;
    return n;
  }
  test_tools::ScratchDir scratch_{"cache"};
  const fs::path& dir_ = scratch_.path;
};

TEST_F(TokenCacheTest, RoundTrip) {
  const auto f = dir_ / "x.h5";
  write_token_cache(f, "key-1", sample());
  EXPECT_EQ(files_in_dir(), 1u) << "the temporary must have been renamed, not left";
  std::string why;
  const auto got = read_token_cache(f, "key-1", &why);
  ASSERT_TRUE(got) << why;
  EXPECT_EQ(got->examples.tokens, sample().examples.tokens);
  EXPECT_EQ(got->examples.trained, sample().examples.trained);
  EXPECT_EQ(got->examples.offsets, sample().examples.offsets);
  EXPECT_EQ(got->examples.pad_id, 2);
  EXPECT_EQ(got->counts.skipped, 1);
  EXPECT_EQ(got->counts.skipped_messages, sample().counts.skipped_messages);
}

TEST_F(TokenCacheTest, StalePartialAndCorruptAreDetected) {
  const auto f = dir_ / "x.h5";
  std::string why;
  EXPECT_FALSE(read_token_cache(f, "k", &why));
  EXPECT_EQ(why, "no cache file");

  write_token_cache(f, "key-1", sample());
  EXPECT_FALSE(read_token_cache(f, "key-2", &why));
  EXPECT_NE(why.find("stale"), std::string::npos) << why;

  // Partial: the first half of a valid file.
  const auto size = fs::file_size(f);
  fs::resize_file(f, size / 2);
  EXPECT_FALSE(read_token_cache(f, "key-1", &why));
  EXPECT_NE(why.find("partial or corrupt"), std::string::npos) << why;

  // Corrupt: not HDF5 at all.
  std::ofstream(f, std::ios::binary) << "this is not an HDF5 file";
  EXPECT_FALSE(read_token_cache(f, "key-1", &why));
  EXPECT_NE(why.find("partial or corrupt"), std::string::npos) << why;

  // Inconsistent: offsets that do not cover the tokens.
  CachedTokens bad = sample();
  bad.examples.offsets.back() = 99;
  fs::remove(f);
  write_token_cache(f, "key-1", bad);
  EXPECT_FALSE(read_token_cache(f, "key-1", &why));
  EXPECT_NE(why.find("inconsistent"), std::string::npos) << why;
}

TEST_F(TokenCacheTest, ContentHashSeesEveryByte) {
  std::string a(1000, 'x');
  const auto h = content_hash(a);
  for (size_t i : {0u, 7u, 8u, 500u, 999u}) {
    std::string b = a;
    b[i] = 'y';
    EXPECT_NE(content_hash(b), h) << i;
  }
  EXPECT_NE(content_hash(a + "x"), h);
  EXPECT_EQ(content_hash(a), h);
}

TEST_F(TokenCacheTest, SecondBuildHitsAndCorruptIsRebuilt) {
  if (!fs::exists(kModel)) GTEST_SKIP() << "shared test data not found at " << kShared;
  const auto tok = load_tokenizer(kModel);
  const auto data = dir_ / "g.jsonl";
  std::ofstream(data) << "{\"text\": \"### Human: hi### Assistant: hello\"}\n{\"text\": \"### Human: a### Assistant: b\"}\n";
  DataConfig c;
  c.files = {{data, 1.0, std::nullopt}};
  c.cache_dir = dir_ / "cache";

  DataReport r1, r2, r3, r4;
  const auto first = build_dataset(c, *tok, kModel, &r1);
  EXPECT_EQ(r1.cache_misses, 1);
  const auto second = build_dataset(c, *tok, kModel, &r2);
  EXPECT_EQ(r2.cache_hits, 1);
  EXPECT_EQ(r2.cache_misses, 0);
  EXPECT_EQ(first.train->tokens, second.train->tokens);
  EXPECT_EQ(first.train->trained, second.train->trained);
  EXPECT_EQ(r1.train_files.label_tokens, r2.train_files.label_tokens);

  // A setting that changes the tokens misses.
  c.target_max_len = 3;
  build_dataset(c, *tok, kModel, &r3);
  EXPECT_EQ(r3.cache_misses, 1);
  c.target_max_len = 512;

  // Corrupt the cache file: rebuilt with a warning, same tokens.
  ASSERT_EQ(r2.cache_files.size(), 1u);
  std::ofstream(r2.cache_files[0], std::ios::binary) << "garbage";
  const auto third = build_dataset(c, *tok, kModel, &r4);
  EXPECT_EQ(r4.cache_misses, 1);
  ASSERT_EQ(r4.warnings.size(), 1u);
  EXPECT_NE(r4.warnings[0].find("partial or corrupt"), std::string::npos) << r4.warnings[0];
  EXPECT_EQ(third.train->tokens, first.train->tokens);

  // The data file's content keys the cache.
  std::ofstream(data, std::ios::app) << "{\"text\": \"### Human: c### Assistant: d\"}\n";
  DataReport r5;
  const auto fourth = build_dataset(c, *tok, kModel, &r5);
  EXPECT_EQ(r5.cache_misses, 1);
  EXPECT_EQ(fourth.train->size(), 3);
  for (const auto& e : fs::directory_iterator(c.cache_dir))
    EXPECT_EQ(e.path().string().find(".tmp"), std::string::npos) << "temporary left: " << e.path();
}

}  // namespace
