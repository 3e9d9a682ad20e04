// The safetensors header parser on valid, corrupted and random bytes, built with ASan + UBSan:
// every malformed input must raise qtrain::InputError, never read out of bounds or crash.
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "data/error.h"
#include "data/io/safetensors_header.h"

namespace qtrain::safetensors {
namespace {

// A valid file image: two F32 tensors a[2,3] and b[4].
std::vector<uint8_t> valid_file() {
  std::vector<TensorInfo> ts = {{"a", Dtype::kF32, {2, 3}, 0, 24}, {"b", Dtype::kF32, {4}, 24, 40}};
  std::string h = serialize_header(ts, {{"format", "pt"}});
  std::vector<uint8_t> f(h.begin(), h.end());
  f.resize(f.size() + 40, 0x7f);
  return f;
}

std::vector<uint8_t> with_header_json(const std::string& json, std::size_t data_bytes) {
  std::vector<uint8_t> f(8);
  uint64_t n = json.size();
  for (int i = 0; i < 8; ++i) f[i] = (n >> (8 * i)) & 0xff;
  f.insert(f.end(), json.begin(), json.end());
  f.resize(f.size() + data_bytes, 0);
  return f;
}

void expect_invalid(const std::vector<uint8_t>& f, const std::string& fragment) {
  try {
    parse_header(f.data(), f.size(), "x.safetensors");
    FAIL() << "expected an InputError mentioning '" << fragment << "'";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("x.safetensors"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
  }
}

TEST(SafetensorsHeader, ParsesValidFile) {
  auto f = valid_file();
  Header h = parse_header(f.data(), f.size(), "x.safetensors");
  ASSERT_EQ(h.tensors.size(), 2u);
  EXPECT_EQ(h.tensors[0].name, "a");
  EXPECT_EQ(h.tensors[0].shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(h.data_offset % 8, 0u);
  EXPECT_EQ(h.metadata.at("format"), "pt");
}

TEST(SafetensorsHeader, RejectsEachCorruption) {
  expect_invalid(std::vector<uint8_t>(5, 0), "shorter than the 8-byte");
  auto f = valid_file();
  f.resize(f.size() - 1);
  expect_invalid(f, "data area");  // truncated data
  auto g = valid_file();
  g[0] = 0xff; g[1] = 0xff;  // header length beyond the file
  expect_invalid(g, "runs past the end");
  expect_invalid(with_header_json("{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]}", 8), "not valid JSON");
  expect_invalid(with_header_json(R"({"a": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 8]}})", 8), "unknown safetensors dtype 'Q4'");
  expect_invalid(with_header_json(R"({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}})", 8), "shape × dtype size");
  expect_invalid(with_header_json(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})", 4), "outside the data area");
  expect_invalid(with_header_json(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}})", 8), "overlaps");
  expect_invalid(with_header_json(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}})", 16), "appears twice");
  expect_invalid(with_header_json(R"({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}})", 8), "non-negative");
  expect_invalid(with_header_json(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}})", 8), "end 0 < begin 8");
  expect_invalid(with_header_json(R"([1, 2])", 0), "JSON object");
  expect_invalid(with_header_json(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}})", 16), "gap of 8 bytes");
  expect_invalid(with_header_json(R"({"a": {"dtype": "F32", "shape": [4611686018427387904, 8], "data_offsets": [0, 8]}})", 8), "overflows");
}

// Random byte flips and truncations of a valid file: each either parses or throws InputError.
TEST(SafetensorsHeader, SurvivesRandomCorruption) {
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  const auto base = valid_file();
  int rejected = 0;
  for (int iter = 0; iter < 4000; ++iter) {
    auto f = base;
    const int flips = 1 + rng() % 4;
    for (int k = 0; k < flips; ++k) f[rng() % f.size()] = static_cast<uint8_t>(rng());
    if (rng() % 4 == 0) f.resize(rng() % f.size());
    try {
      parse_header(f.data(), f.size(), "fuzz.safetensors");
    } catch (const InputError&) {
      ++rejected;
    }
  }
  EXPECT_GT(rejected, 0);
}

}  // namespace
}  // namespace qtrain::safetensors
