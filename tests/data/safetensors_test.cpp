// safetensors reader/writer through libtorch: round trips for every dtype, zero-copy views, sharded
// checkpoints and their index, atomic writes. Header corruption cases live in the ASan suite.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <random>

#include <nlohmann/json.hpp>

#include "data/error.h"
#include "data/io/safetensors.h"

namespace qtrain::safetensors {
namespace {
namespace fs = std::filesystem;

fs::path temp_dir(const std::string& name) {
  fs::path d = fs::temp_directory_path() / ("qtrain-st-" + name + "-" + std::to_string(std::random_device{}()));
  fs::create_directories(d);
  return d;
}

std::map<std::string, at::Tensor> random_tensors() {
  at::manual_seed(std::random_device{}());
  return {
      {"b.f32", at::randn({3, 5})},
      {"a.bf16", at::randn({7}).to(at::kBFloat16)},
      {"c.f16", at::randn({2, 2, 3}).to(at::kHalf)},
      {"d.i64", at::randint(-1000, 1000, {4}, at::kLong)},
      {"e.u8", at::randint(0, 255, {9}, at::kByte)},
      {"f.scalar", at::scalar_tensor(3.5, at::kDouble)},
      {"g.empty", at::empty({0, 4})},
      {"h.bool", at::randint(0, 2, {5}, at::kLong).to(at::kBool)},
  };
}

TEST(Safetensors, RoundTripsEveryDtype) {
  const fs::path d = temp_dir("rt");
  const auto tensors = random_tensors();
  save(d / "x.safetensors", tensors);
  auto f = File::open(d / "x.safetensors");
  EXPECT_EQ(f->names().size(), tensors.size());
  EXPECT_EQ(f->header().data_offset % 8, 0u) << "data area must start 8-byte aligned";
  for (const auto& [name, t] : tensors) {
    at::Tensor back = f->tensor(name);
    EXPECT_EQ(back.scalar_type(), t.scalar_type()) << name;
    EXPECT_EQ(back.sizes(), t.sizes()) << name;
    EXPECT_TRUE(at::equal(back, t)) << name;
  }
  fs::remove_all(d);
}

TEST(Safetensors, TensorsAliasTheMappingAndOutliveTheFile) {
  const fs::path d = temp_dir("alias");
  save(d / "x.safetensors", {{"w", at::arange(16, at::kFloat)}});
  at::Tensor w;
  const void* base = nullptr;
  {
    auto f = File::open(d / "x.safetensors");
    w = f->tensor("w");
    base = w.data_ptr();
    EXPECT_EQ(f->tensor("w").data_ptr(), base) << "two reads of one tensor should alias the same mapping";
  }
  // The File handle is gone; the tensor still keeps the mapping alive.
  EXPECT_EQ(w.data_ptr(), base);
  EXPECT_FLOAT_EQ(w[15].item<float>(), 15.f);
  fs::remove_all(d);
}

TEST(Safetensors, WriterOutputIsSortedAndPadded) {
  const fs::path d = temp_dir("sorted");
  save(d / "x.safetensors", {{"z", at::ones({1})}, {"a", at::ones({2})}});
  std::ifstream in(d / "x.safetensors", std::ios::binary);
  uint64_t n = 0;
  in.read(reinterpret_cast<char*>(&n), 8);
  std::string json(n, '\0');
  in.read(json.data(), n);
  EXPECT_EQ((8 + n) % 8, 0u);
  EXPECT_LT(json.find("\"__metadata__\""), json.find("\"a\""));
  EXPECT_LT(json.find("\"a\""), json.find("\"z\""));
  EXPECT_NE(json.find("\"format\":\"pt\""), std::string::npos);
  fs::remove_all(d);
}

TEST(Safetensors, ShardedCheckpointRoundTrips) {
  const fs::path d = temp_dir("shard");
  std::map<std::string, at::Tensor> tensors;
  for (int i = 0; i < 10; ++i) tensors["layer." + std::to_string(i) + ".weight"] = at::randn({16, 16});  // 1 KiB each
  save_sharded(d, tensors, /*max_shard_bytes=*/3000);
  ASSERT_TRUE(fs::exists(d / "model.safetensors.index.json"));
  EXPECT_FALSE(fs::exists(d / "model.safetensors"));
  Checkpoint c = Checkpoint::open(d);
  EXPECT_EQ(c.files().size(), 5u);  // two 1 KiB tensors per 3000-byte shard
  for (const auto& [name, t] : tensors) EXPECT_TRUE(at::equal(c.tensor(name), t)) << name;
  nlohmann::json index = nlohmann::json::parse(std::ifstream(d / "model.safetensors.index.json"));
  EXPECT_EQ(index["metadata"]["total_size"].get<uint64_t>(), 10u * 1024u);
  EXPECT_EQ(index["weight_map"]["layer.0.weight"], "model-00001-of-00005.safetensors");
  fs::remove_all(d);
}

TEST(Safetensors, SmallCheckpointIsOneFile) {
  const fs::path d = temp_dir("one");
  save_sharded(d, {{"w", at::ones({4})}}, 1 << 20);
  EXPECT_TRUE(fs::exists(d / "model.safetensors"));
  EXPECT_FALSE(fs::exists(d / "model.safetensors.index.json"));
  fs::remove_all(d);
}

void expect_input_error(const std::function<void()>& f, const std::string& fragment) {
  try {
    f();
    FAIL() << "expected InputError containing '" << fragment << "'";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
  }
}

TEST(Safetensors, IndexErrorsNameTheShardAndTensor) {
  const fs::path d = temp_dir("badindex");
  save_sharded(d, {{"a", at::ones({300})}, {"b", at::ones({300})}}, 1500);
  fs::remove(d / "model-00002-of-00002.safetensors");
  expect_input_error([&] { Checkpoint::open(d); }, "shard 'model-00002-of-00002.safetensors' (holding tensor 'b') does not exist");

  std::ofstream(d / "model.safetensors.index.json") << R"({"weight_map": {"a": "model-00001-of-00002.safetensors", "zz": "model-00001-of-00002.safetensors"}})";
  expect_input_error([&] { Checkpoint::open(d); }, "tensor 'zz' is mapped to 'model-00001-of-00002.safetensors' but that shard does not contain it");
  std::ofstream(d / "model.safetensors.index.json") << R"({"weight_map": {"a": "../../etc/passwd"}})";
  expect_input_error([&] { Checkpoint::open(d); }, "must be a file in the same directory");
  std::ofstream(d / "model.safetensors.index.json") << "{not json";
  expect_input_error([&] { Checkpoint::open(d); }, "not valid JSON");
  fs::remove_all(d);
  expect_input_error([&] { Checkpoint::open(d); }, "no model.safetensors");
}

TEST(Safetensors, MissingTensorIsNamed) {
  const fs::path d = temp_dir("missing");
  save(d / "model.safetensors", {{"a", at::ones({1})}});
  Checkpoint c = Checkpoint::open(d);
  expect_input_error([&] { c.tensor("nope"); }, "no tensor 'nope'");
  fs::remove_all(d);
}

TEST(Safetensors, FailedWriteLeavesNoFile) {
  const fs::path d = temp_dir("atomic");
  save(d / "x.safetensors", {{"old", at::ones({1})}});
  // A dtype the format lacks makes the writer throw before commit: the old file must survive intact
  // and no temporary may be left behind.
  EXPECT_THROW(save(d / "x.safetensors", {{"a", at::ones({1}, at::kComplexFloat)}}), std::invalid_argument);
  EXPECT_TRUE(File::open(d / "x.safetensors")->contains("old"));
  int files = 0;
  for (const auto& e : fs::directory_iterator(d)) (void)e, ++files;
  EXPECT_EQ(files, 1);
  fs::remove_all(d);
}

}  // namespace
}  // namespace qtrain::safetensors
