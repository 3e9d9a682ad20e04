// The qtrain executable on good and bad input: each bad model directory gives an error that names the
// file and the tensor or key, the documented exit code, and no crash.
#include <gtest/gtest.h>

#include <regex>
#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>

#include <nlohmann/json.hpp>

#include "data/io/safetensors.h"
#include "trainer/model/model.h"

#include "tests/cli_run.h"

namespace qtrain {
namespace {
namespace fs = std::filesystem;

using Result = test_tools::CliRun;
Result run(const std::string& args) { return test_tools::run_qtrain(args); }

nlohmann::json tiny_config() {
  return {{"model_type", "llama"}, {"vocab_size", 32}, {"hidden_size", 16}, {"intermediate_size", 24},
          {"num_hidden_layers", 1}, {"num_attention_heads", 2}, {"num_key_value_heads", 1},
          {"tie_word_embeddings", false}, {"rms_norm_eps", 1e-5}};
}

std::map<std::string, at::Tensor> tiny_weights() {
  const std::string p = "model.layers.0.";
  return {{"model.embed_tokens.weight", at::randn({32, 16})},   {"lm_head.weight", at::randn({32, 16})},
          {"model.norm.weight", at::ones({16})},                {p + "input_layernorm.weight", at::ones({16})},
          {p + "post_attention_layernorm.weight", at::ones({16})}, {p + "self_attn.q_proj.weight", at::randn({16, 16})},
          {p + "self_attn.k_proj.weight", at::randn({8, 16})},  {p + "self_attn.v_proj.weight", at::randn({8, 16})},
          {p + "self_attn.o_proj.weight", at::randn({16, 16})}, {p + "mlp.gate_proj.weight", at::randn({24, 16})},
          {p + "mlp.up_proj.weight", at::randn({24, 16})},      {p + "mlp.down_proj.weight", at::randn({16, 24})}};
}

class CliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("qtrain-cli-" + std::to_string(std::random_device{}()));
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  fs::path make_model(const std::string& name, const nlohmann::json& cfg, const std::map<std::string, at::Tensor>& w) {
    fs::path d = dir_ / name;
    fs::create_directories(d);
    std::ofstream(d / "config.json") << cfg.dump(2);
    safetensors::save(d / "model.safetensors", w);
    return d;
  }
  // Rewrites bytes of the model file: the header is `patch` applied to the serialized JSON.
  static void rewrite_header(const fs::path& file, const std::function<void(nlohmann::json&)>& patch, int64_t delta_data = 0) {
    std::ifstream in(file, std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), {});
    uint64_t n = 0;
    std::memcpy(&n, bytes.data(), 8);
    nlohmann::json h = nlohmann::json::parse(bytes.substr(8, n));
    patch(h);
    std::string json = h.dump();
    std::string data = bytes.substr(8 + n);
    if (delta_data < 0) data.resize(data.size() + delta_data);
    uint64_t m = json.size();
    std::string out(reinterpret_cast<const char*>(&m), 8);
    std::ofstream(file, std::ios::binary | std::ios::trunc) << out << json << data;
  }
  fs::path dir_;
};

TEST_F(CliTest, HelpVersionAndUsageErrors) {
  const auto help = run("--help");
  EXPECT_EQ(help.code, 0);
  // Every verb stands apart from its summary (a 10-letter verb once ran into it: "dequantizewrite").
  for (const char* verb : {"train", "inspect", "forward", "tokenize", "quantize", "dequantize", "data"})
    EXPECT_TRUE(std::regex_search(help.output, std::regex(std::string("\n  ") + verb + "  +[a-z]"))) << verb << "\n" << help.output;
  EXPECT_NE(run("--version").output.find(QTRAIN_VERSION), std::string::npos);
  auto r = run("frobnicate");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.output.find("unknown verb 'frobnicate'"), std::string::npos) << r.output;
  r = run("forward --no-such-option");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.output.find("--no-such-option"), std::string::npos) << r.output;
  r = run("forward " + dir_.string() + " --ids 1,x --out o.safetensors");
  EXPECT_EQ(r.code, 2);
  EXPECT_EQ(run("").code, 2);
}

TEST_F(CliTest, ForwardAndInspectWork) {
  const fs::path d = make_model("good", tiny_config(), tiny_weights());
  auto r = run("forward " + d.string() + " --ids 1,2,3 --out " + (dir_ / "l.safetensors").string());
  ASSERT_EQ(r.code, 0) << r.output;
  at::Tensor logits = safetensors::File::open(dir_ / "l.safetensors")->tensor("logits");
  EXPECT_EQ(logits.sizes(), at::IntArrayRef({3, 32}));
  // Same logits as the library forward pass.
  LlamaModel m = LlamaModel::load(d, {});
  EXPECT_TRUE(at::allclose(m.forward(at::tensor({1, 2, 3}, at::kLong).view({1, 3}))[0], logits));
  r = run("inspect " + d.string());
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("llama: 1 layers"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("NF4"), std::string::npos) << r.output;
  r = run("forward " + d.string() + " --ids 1,99 --out " + (dir_ / "x.safetensors").string());
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("token id 99 is outside the vocabulary"), std::string::npos) << r.output;
}

struct BadCase {
  std::string name;
  std::function<void(const fs::path&)> corrupt;  // applied to a good model dir
  int code;
  std::vector<std::string> expected;  // fragments of the message
};

TEST_F(CliTest, BadModelDirectories) {
  const std::vector<BadCase> cases = {
      {"truncated", [](const fs::path& d) { fs::resize_file(d / "model.safetensors", fs::file_size(d / "model.safetensors") - 10); },
       3, {"model.safetensors", "outside the data area"}},
      {"header_len", [](const fs::path& d) {
         std::fstream f(d / "model.safetensors", std::ios::in | std::ios::out | std::ios::binary);
         const uint64_t n = 1ull << 40;
         f.write(reinterpret_cast<const char*>(&n), 8);
       }, 3, {"model.safetensors", "exceeds the limit"}},
      {"offsets_out_of_range", [](const fs::path& d) {
         rewrite_header(d / "model.safetensors", [](auto& h) { h["model.norm.weight"]["data_offsets"][1] = 1u << 30; });
       }, 3, {"model.norm.weight"}},
      {"overlap", [](const fs::path& d) {
         rewrite_header(d / "model.safetensors", [](auto& h) {
           h["model.norm.weight"]["data_offsets"] = h["lm_head.weight"]["data_offsets"];
           h["model.norm.weight"]["shape"] = {512};
         });
       }, 3, {"model.safetensors", "overlaps"}},
      {"unknown_dtype", [](const fs::path& d) {
         rewrite_header(d / "model.safetensors", [](auto& h) { h["lm_head.weight"]["dtype"] = "F4"; });
       }, 3, {"lm_head.weight", "unknown safetensors dtype 'F4'"}},
      {"shape_size_mismatch", [](const fs::path& d) {
         rewrite_header(d / "model.safetensors", [](auto& h) { h["lm_head.weight"]["shape"] = {32, 15}; });
       }, 3, {"lm_head.weight", "shape × dtype size"}},
      {"shape_vs_config", [](const fs::path& d) {
         auto w = tiny_weights();
         w["lm_head.weight"] = at::randn({31, 16});
         safetensors::save(d / "model.safetensors", w);
       }, 3, {"lm_head.weight", "[31, 16]", "[32, 16]"}},
      {"missing_tensor", [](const fs::path& d) {
         auto w = tiny_weights();
         w.erase("model.layers.0.mlp.up_proj.weight");
         safetensors::save(d / "model.safetensors", w);
       }, 3, {"missing tensor 'model.layers.0.mlp.up_proj.weight'"}},
      {"missing_shard", [](const fs::path& d) {
         fs::remove(d / "model.safetensors");
         safetensors::save_sharded(d, tiny_weights(), 4096);
         fs::remove(d / "model-00002-of-00004.safetensors");
       }, 3, {"model.safetensors.index.json", "model-00002-of-00004.safetensors", "does not exist"}},
      {"missing_config_key", [](const fs::path& d) {
         auto c = tiny_config();
         c.erase("num_attention_heads");
         std::ofstream(d / "config.json") << c.dump();
       }, 3, {"config.json", "num_attention_heads", "missing"}},
      {"unsupported_model_type", [](const fs::path& d) {
         auto c = tiny_config();
         c["model_type"] = "falcon";
         std::ofstream(d / "config.json") << c.dump();
       }, 3, {"config.json", "model_type", "falcon"}},
      {"no_checkpoint", [](const fs::path& d) { fs::remove(d / "model.safetensors"); }, 3, {"no model.safetensors"}},
  };
  for (const auto& c : cases) {
    const fs::path d = make_model(c.name, tiny_config(), tiny_weights());
    c.corrupt(d);
    for (const std::string verb : {"forward", "inspect"}) {
      if (verb == "inspect" && (c.name == "shape_vs_config" || c.name == "missing_tensor")) continue;  // inspect reads headers only
      const std::string args = verb == "forward" ? "forward " + d.string() + " --ids 1,2 --out " + (dir_ / "o.safetensors").string()
                                                 : "inspect " + d.string();
      const Result r = run(args);
      EXPECT_EQ(r.code, c.code) << c.name << " / " << verb << ": " << r.output;
      for (const auto& frag : c.expected)
        EXPECT_NE(r.output.find(frag), std::string::npos) << c.name << " / " << verb << ": expected '" << frag << "' in: " << r.output;
    }
  }
  EXPECT_FALSE(fs::exists(dir_ / "o.safetensors")) << "a failed forward must not leave an output file";
}

}  // namespace
}  // namespace qtrain
