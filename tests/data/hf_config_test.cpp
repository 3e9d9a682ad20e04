// config.json parsing: both transformers spellings, defaults, and an error naming the key for each
// unsupported or malformed value.
#include <gtest/gtest.h>

#include <functional>

#include <nlohmann/json.hpp>

#include "data/error.h"
#include "data/io/hf_config.h"

namespace qtrain {
namespace {

nlohmann::json llama() {
  return {{"model_type", "llama"},       {"vocab_size", 100},       {"hidden_size", 64},
          {"intermediate_size", 128},    {"num_hidden_layers", 2},  {"num_attention_heads", 8},
          {"num_key_value_heads", 2},    {"rms_norm_eps", 1e-5},    {"rope_theta", 500000.0},
          {"tie_word_embeddings", true}, {"eos_token_id", {128001, 128009}}};
}

ModelConfig parse(const nlohmann::json& j) { return parse_model_config_text(j.dump(), "cfg/config.json"); }

std::string error_of(const nlohmann::json& j) {
  try {
    parse(j);
  } catch (const InputError& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(HfConfig, ParsesLlamaWithDefaults) {
  ModelConfig c = parse(llama());
  EXPECT_EQ(c.family, ModelFamily::kLlama);
  EXPECT_EQ(c.head_dim, 8);
  EXPECT_EQ(c.kv_dim(), 16);
  EXPECT_DOUBLE_EQ(c.rope.theta, 500000.0);
  EXPECT_EQ(c.rope.type, RopeType::kDefault);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.eos_token_ids, (std::vector<int64_t>{128001, 128009}));
  auto mha = llama();
  mha.erase("num_key_value_heads");
  EXPECT_EQ(parse(mha).num_key_value_heads, 8);
}

TEST(HfConfig, ReadsBothRopeSpellings) {
  auto v4 = llama();
  v4["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0},
                        {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 8192}};
  auto v5 = llama();
  v5.erase("rope_theta");
  v5["rope_parameters"] = v4["rope_scaling"];
  v5["rope_parameters"]["rope_theta"] = 500000.0;
  for (const auto& j : {v4, v5}) {
    ModelConfig c = parse(j);
    EXPECT_EQ(c.rope.type, RopeType::kLlama3);
    EXPECT_DOUBLE_EQ(c.rope.factor, 8.0);
    EXPECT_DOUBLE_EQ(c.rope.theta, 500000.0);
    EXPECT_EQ(c.rope.original_max_position_embeddings, 8192);
  }
}

TEST(HfConfig, FamilyFlags) {
  auto q2 = llama();
  q2["model_type"] = "qwen2";
  EXPECT_TRUE(parse(q2).qkv_bias);
  auto q3 = llama();
  q3["model_type"] = "qwen3";
  q3["head_dim"] = 32;
  EXPECT_TRUE(parse(q3).qk_norm);
  EXPECT_EQ(parse(q3).head_dim, 32);
  auto m = llama();
  m["model_type"] = "mistral";
  m["sliding_window"] = 4096;
  EXPECT_EQ(parse(m).sliding_window.value_or(0), 4096);
}

TEST(HfConfig, ErrorsNameFileKeyAndValue) {
  struct Case {
    std::function<void(nlohmann::json&)> edit;
    std::string expected;
  };
  const std::vector<Case> cases = {
      {[](auto& j) { j["model_type"] = "gpt_neox"; }, "key 'model_type': unsupported model_type 'gpt_neox'"},
      {[](auto& j) { j.erase("model_type"); }, "key 'model_type': missing"},
      {[](auto& j) { j.erase("hidden_size"); }, "key 'hidden_size': missing (required)"},
      {[](auto& j) { j["vocab_size"] = "many"; }, "key 'vocab_size': expected an integer, found \"many\""},
      {[](auto& j) { j["num_key_value_heads"] = 3; }, "key 'num_key_value_heads': 3 does not divide num_attention_heads 8"},
      {[](auto& j) { j["rope_scaling"] = {{"type", "yarn"}, {"factor", 4.0}}; }, "key 'rope_scaling.rope_type': unsupported rope scaling type 'yarn'"},
      {[](auto& j) { j["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}}; }, "original_max_position_embeddings': missing"},
      {[](auto& j) { j["hidden_act"] = "gelu"; }, "key 'hidden_act': unsupported activation 'gelu'"},
      {[](auto& j) { j["hidden_size"] = -64; }, "key 'hidden_size': must be positive"},
      {[](auto& j) { j["head_dim"] = 7; }, "key 'head_dim': must be positive and even"},
      {[](auto& j) { j["model_type"] = "qwen2"; j["use_sliding_window"] = true; }, "key 'use_sliding_window'"},
  };
  for (const auto& c : cases) {
    auto j = llama();
    c.edit(j);
    const std::string err = error_of(j);
    EXPECT_NE(err.find("cfg/config.json"), std::string::npos) << err;
    EXPECT_NE(err.find(c.expected), std::string::npos) << "expected '" << c.expected << "' in: " << err;
  }
  EXPECT_NE(error_of(nlohmann::json::array()).find("expected a JSON object"), std::string::npos);
  EXPECT_THROW(parse_model_config_text("{oops", "x.json"), InputError);
  EXPECT_THROW(parse_model_config("/nonexistent/config.json"), InputError);
}

}  // namespace
}  // namespace qtrain
