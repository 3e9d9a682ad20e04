// Pieces of the model that have their own invariants: the attention mask, RoPE, target modules, the
// random initialiser, and loading a checkpoint whose base weight is not finite.
#include <gtest/gtest.h>

#include <ATen/CPUGeneratorImpl.h>

#include <filesystem>
#include <fstream>
#include <random>

#include "data/error.h"
#include "data/io/safetensors.h"
#include "trainer/model/attention_mask.h"
#include "trainer/model/linear_modules.h"
#include "trainer/model/model.h"
#include "trainer/model/rope.h"

namespace qtrain {
namespace {
namespace fs = std::filesystem;

// The rule, written out per element: query q may see key k of the same document, k <= q, inside the
// window; a padding query (-1) sees itself only.
bool allowed(const std::vector<int>& seg, int q, int k, std::optional<int64_t> window) {
  if (seg[q] < 0) return q == k;
  return seg[k] == seg[q] && k <= q && (!window || k > q - *window);
}

void expect_mask(const at::Tensor& m, const std::vector<std::vector<int>>& seg, std::optional<int64_t> window,
                 const std::string& what) {
  const auto b = static_cast<int64_t>(seg.size()), t = static_cast<int64_t>(seg[0].size());
  ASSERT_TRUE(m.defined()) << what;
  ASSERT_EQ(m.sizes(), at::IntArrayRef({b, 1, t, t})) << what;
  for (int64_t r = 0; r < b; ++r)
    for (int q = 0; q < t; ++q)
      for (int k = 0; k < t; ++k)
        EXPECT_EQ(m[r][0][q][k].item<bool>(), allowed(seg[r], q, k, window)) << what << " row " << r << " q " << q << " k " << k;
}

at::Tensor seg_tensor(const std::vector<std::vector<int>>& seg) {
  std::vector<int> flat;
  for (const auto& r : seg) flat.insert(flat.end(), r.begin(), r.end());
  return at::tensor(flat, at::kInt).view({static_cast<int64_t>(seg.size()), static_cast<int64_t>(seg[0].size())});
}

TEST(AttentionMask, PaddingIsOneDocumentPerRow) {
  // Row 0: [pad, tok, tok, tok] (left padded); row 1: no padding.
  at::Tensor am = at::tensor({0, 1, 1, 1, 1, 1, 1, 1}, at::kLong).view({2, 4});
  const at::Tensor seg = segment_ids_from_padding(am);
  EXPECT_TRUE(at::equal(seg, at::tensor({-1, 0, 0, 0, 0, 0, 0, 0}, at::kInt).view({2, 4})));
  expect_mask(build_attention_mask(seg, 2, 4, std::nullopt, at::kCPU), {{-1, 0, 0, 0}, {0, 0, 0, 0}}, std::nullopt,
              "left padding");
}

TEST(AttentionMask, PackedRowsWithWindow) {
  const std::vector<std::vector<int>> seg = {{0, 0, 0, 0, 1, 1, -1}, {0, 1, 1, 1, 1, 1, 1}};
  for (std::optional<int64_t> w : {std::optional<int64_t>{}, std::optional<int64_t>{2}, std::optional<int64_t>{3}})
    expect_mask(build_attention_mask(seg_tensor(seg), 2, 7, w, at::kCPU), seg, w,
                "packed, window " + (w ? std::to_string(*w) : std::string("none")));
  expect_mask(build_attention_mask({}, 1, 5, 2, at::kCPU), {{0, 0, 0, 0, 0}}, 2, "window only");
  // Negative control: the rule above must tell a window-2 mask from a window-3 one.
  const at::Tensor m2 = build_attention_mask(seg_tensor(seg), 2, 7, 2, at::kCPU);
  const at::Tensor m3 = build_attention_mask(seg_tensor(seg), 2, 7, 3, at::kCPU);
  EXPECT_FALSE(at::equal(m2, m3));
}

TEST(AttentionMask, PlainCausalIsUndefined) {
  EXPECT_FALSE(build_attention_mask({}, 2, 4, std::nullopt, at::kCPU).defined()) << "plain causal uses SDPA's is_causal";
  EXPECT_FALSE(build_attention_mask(at::zeros({2, 4}, at::kInt), 2, 4, std::nullopt, at::kCPU).defined())
      << "one document per row, no padding";
  EXPECT_FALSE(build_attention_mask({}, 2, 4, 4, at::kCPU).defined()) << "a window that covers the row changes nothing";
  EXPECT_TRUE(build_attention_mask({}, 2, 4, 3, at::kCPU).defined()) << "a window shorter than the row bites";
  EXPECT_TRUE(build_attention_mask(seg_tensor({{0, 0, 1, 1}}), 1, 4, std::nullopt, at::kCPU).defined());
  EXPECT_THROW(build_attention_mask(at::zeros({2, 5}, at::kInt), 2, 4, std::nullopt, at::kCPU), c10::Error)
      << "segment ids of the wrong shape";
}

TEST(TargetModules, AllLinearExpandsAndNamesAreChecked) {
  EXPECT_EQ(resolve_target_modules({"all-linear"}).size(), kLinearModules.size());
  EXPECT_EQ(resolve_target_modules({"q_proj", "all-linear"}).front(), "q_proj");
  EXPECT_EQ(resolve_target_modules({"v_proj", "q_proj", "v_proj"}), (std::vector<std::string>{"v_proj", "q_proj"}));
  try {
    resolve_target_modules({"all-linear", "qproj"});
    ADD_FAILURE() << "an unknown module must be refused, all-linear or not";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("'qproj'"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("down_proj"), std::string::npos) << e.what();
  }
}

ModelConfig tiny_config() {
  ModelConfig c;
  c.vocab_size = 32;
  c.hidden_size = 64;
  c.intermediate_size = 96;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 16;
  return c;
}

const char* kTinyConfigJson = R"({"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 32,
  "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
  "num_key_value_heads": 2, "head_dim": 16, "rms_norm_eps": 1e-6, "tie_word_embeddings": false})";

TEST(RandomInit, SeededAndScaled) {
  const ModelConfig c = tiny_config();
  const auto a = LlamaModel::random(c, {}, at::make_generator<at::CPUGeneratorImpl>(5)).state_tensors();
  const auto b = LlamaModel::random(c, {}, at::make_generator<at::CPUGeneratorImpl>(5)).state_tensors();
  const auto other = LlamaModel::random(c, {}, at::make_generator<at::CPUGeneratorImpl>(6)).state_tensors();
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [name, t] : a) EXPECT_TRUE(at::equal(t, b.at(name))) << name << " differs for one seed";
  EXPECT_FALSE(at::equal(a.at("model.layers.1.mlp.up_proj.weight"), other.at("model.layers.1.mlp.up_proj.weight")));
  EXPECT_TRUE(at::equal(a.at("model.norm.weight"), at::ones({64})));
  // std 1/sqrt(in) for linears, 2/sqrt(hidden) for the LM head: 6144 and 2048 draws, so ±10% is > 5 sigma.
  EXPECT_NEAR(a.at("model.layers.0.mlp.down_proj.weight").std().item<double>(), 1.0 / std::sqrt(96.0), 0.1 / std::sqrt(96.0));
  EXPECT_NEAR(a.at("lm_head.weight").std().item<double>(), 2.0 / 8.0, 0.1 * 2.0 / 8.0);
}

// A checkpoint directory with kTinyConfigJson and `tensors`, sharded when max_shard_bytes is small.
fs::path write_checkpoint(const std::map<std::string, at::Tensor>& tensors, uint64_t max_shard_bytes) {
  const fs::path dir = fs::temp_directory_path() / ("qtrain-model-test-" + std::to_string(std::random_device{}()));
  fs::create_directories(dir);
  std::ofstream(dir / "config.json") << kTinyConfigJson;
  safetensors::save_sharded(dir, tensors, max_shard_bytes);
  return dir;
}

// A NaN or Inf in a base weight: loading with quantization names the tensor and the file (the shard)
// that holds it, and where in the tensor.
TEST(ModelLoad, NonFiniteBaseWeightNamesTensorAndFile) {
  auto tensors = LlamaModel::random(tiny_config(), {}, at::make_generator<at::CPUGeneratorImpl>(1)).state_tensors();
  LoadOptions quantized;
  quantized.quantize = ops::QuantParams{};
  const std::string bad = "model.layers.1.mlp.up_proj.weight";  // [96, 64]
  for (const float poison : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
    for (const uint64_t shard_bytes : {uint64_t{1} << 30, uint64_t{40000}}) {
      std::map<std::string, at::Tensor> t = tensors;
      // Negative control first: the clean checkpoint loads.
      const fs::path clean = write_checkpoint(t, shard_bytes);
      EXPECT_NO_THROW(LlamaModel::load(clean, quantized));
      fs::remove_all(clean);
      t[bad] = t[bad].clone();
      t[bad][5][7] = poison;
      const fs::path dir = write_checkpoint(t, shard_bytes);
      const auto files = safetensors::Checkpoint::open(dir).files();
      std::string holder;  // the shard that holds `bad`
      for (const auto& f : files)
        if (safetensors::File::open(f)->contains(bad)) holder = f.string();
      try {
        LlamaModel::load(dir, quantized);
        ADD_FAILURE() << "a non-finite base weight must be refused";
      } catch (const InputError& e) {
        const std::string msg = e.what();
        SCOPED_TRACE(msg);
        EXPECT_NE(msg.find("'" + bad + "'"), std::string::npos) << "names the tensor";
        EXPECT_NE(msg.find(holder), std::string::npos) << "names the file " << holder << " (" << files.size() << " files)";
        EXPECT_NE(msg.find("[5, 7]"), std::string::npos) << "names the element";
      }
      // Without quantization the weight is not inspected (dense loading stays a zero-copy view).
      EXPECT_NO_THROW(LlamaModel::load(dir, LoadOptions{}));
      fs::remove_all(dir);
    }
  }
}

TEST(ModelForward, IdsOutsideTheVocabularyAreRefused) {
  const LlamaModel m = LlamaModel::random(tiny_config(), {}, at::make_generator<at::CPUGeneratorImpl>(1));
  EXPECT_THROW(m.forward(at::tensor({1, 32}, at::kLong).view({1, 2})), UsageError);
  EXPECT_THROW(m.hidden_states(at::tensor({-1, 3}, at::kLong).view({1, 2}), at::zeros({1, 2}, at::kInt),
                               at::zeros({1, 2}, at::kLong)),
               UsageError);
  EXPECT_EQ(m.forward(at::tensor({1, 31}, at::kLong).view({1, 2})).sizes(), at::IntArrayRef({1, 2, 32}));
}

TEST(Rope, RotationPreservesNormAndIsRelative) {
  RopeConfig cfg;
  at::Tensor inv = rope_inv_freq(cfg, 16);
  at::Tensor pos = at::arange(6, at::kLong).view({1, 6});
  RopeTables t = rope_tables(inv, pos, at::kDouble);
  at::Tensor q = at::randn({1, 1, 6, 16}, at::kDouble), k = at::randn({1, 1, 6, 16}, at::kDouble);
  at::Tensor qr = apply_rope(q, t), kr = apply_rope(k, t);
  EXPECT_TRUE(at::allclose(qr.norm(2, -1), q.norm(2, -1)));
  // <rope(q, i), rope(k, j)> depends on i - j only: positions (1, 0) and (7, 6) give the same score.
  at::Tensor x = at::randn({1, 1, 2, 16}, at::kDouble);  // [q, k] as a 2-token sequence
  auto score = [&](int64_t pq, int64_t pk) {
    RopeTables tt = rope_tables(inv, at::tensor({pq, pk}, at::kLong).view({1, 2}), at::kDouble);
    at::Tensor r = apply_rope(x, tt);
    return (r[0][0][0] * r[0][0][1]).sum().item<double>();
  };
  // Tables are float32 by design (as in transformers): angles carry ~1e-7 relative error.
  EXPECT_NEAR(score(1, 0), score(7, 6), 1e-5);
  EXPECT_GT(std::abs(score(1, 0) - score(7, 0)), 1e-3) << "negative control: a different offset must change the score";
}

TEST(Rope, Llama3ScalingKeepsHighFrequenciesAndSlowsLowOnes) {
  RopeConfig base;
  base.theta = 500000;
  RopeConfig l3 = base;
  l3.type = RopeType::kLlama3;
  l3.factor = 8;
  l3.original_max_position_embeddings = 8192;
  at::Tensor a = rope_inv_freq(base, 128), b = rope_inv_freq(l3, 128);
  EXPECT_FLOAT_EQ(b[0].item<float>(), a[0].item<float>());        // shortest wavelength untouched
  EXPECT_FLOAT_EQ(b[63].item<float>(), a[63].item<float>() / 8);  // longest slowed by the factor
}

}  // namespace
}  // namespace qtrain
