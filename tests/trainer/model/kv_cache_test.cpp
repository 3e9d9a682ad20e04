// Cached decoding (LlamaModel::forward_cached + KvCache) against the full forward pass: the logits of a
// sequence fed in random blocks (single tokens among them) equal forward()'s logits of the whole
// sequence, on the shared trained tiny Llama and on random Qwen3 (q/k norm) and Mistral (sliding window
// shorter than the sequence) models; plus the cached mask rule per element and the cache's growth.
#include <gtest/gtest.h>

#include <ATen/CPUGeneratorImpl.h>

#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <random>

#include "trainer/model/attention_mask.h"
#include "trainer/model/kv_cache.h"
#include "trainer/model/model.h"

namespace qtrain {
namespace {
namespace fs = std::filesystem;

fs::path shared_data() {
  if (const char* e = std::getenv("QTRAIN_SHARED_DATA"); e && *e) return e;
  return QTRAIN_SHARED_DATA;
}

ModelConfig small_config(ModelFamily family) {
  ModelConfig c;
  c.family = family;
  c.vocab_size = 96;
  c.hidden_size = 64;
  c.intermediate_size = 96;
  c.num_hidden_layers = 3;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 16;
  if (family == ModelFamily::kQwen3) c.qk_norm = true;
  if (family == ModelFamily::kMistral) c.sliding_window = 5;  // shorter than every test sequence
  return c;
}

// A random model whose norm weights are not all ones, so q/k norm and the layer norms scale something.
LlamaModel random_model(const ModelConfig& c, uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  LlamaModel m = LlamaModel::random(c, {}, gen);
  for (auto& [name, t] : m.state_tensors())  // the model's own tensors, not copies
    if (name.find("norm.weight") != std::string::npos) t.uniform_(0.5, 1.5, gen);
  return m;
}

// Random block sizes (1 .. 6, about a third single tokens) that sum to `total`.
std::vector<int64_t> random_blocks(int64_t total, std::mt19937_64& rng) {
  std::vector<int64_t> sizes;
  for (int64_t done = 0; done < total;) {
    const int64_t n = std::min<int64_t>(total - done, std::uniform_int_distribution<int>(0, 2)(rng) == 0
                                                           ? 1
                                                           : std::uniform_int_distribution<int>(2, 6)(rng));
    sizes.push_back(n);
    done += n;
  }
  return sizes;
}

// Logits of ids [batch, seq] fed block by block through one cache.
at::Tensor cached_logits(const LlamaModel& m, const at::Tensor& ids, const std::vector<int64_t>& blocks, int64_t capacity) {
  KvCache cache(m.config(), ids.size(0), m.dtype(), m.device(), capacity);
  std::vector<at::Tensor> out;
  int64_t start = 0;
  for (const int64_t n : blocks) {
    out.push_back(m.forward_cached(ids.narrow(1, start, n), cache));
    start += n;
    EXPECT_EQ(cache.length(), start);
  }
  return at::cat(out, 1);
}

// fp32 tolerance, relative to the largest |logit|: the cached path runs the same ops on the same values,
// but every GEMM and SDPA call sees other shapes (a block of the sequence, a longer key axis) and so
// other kernels and summation orders. Measured max |cached - full| / max |logit|: up to 1.4e-5 on the
// trained tiny Llama (logits up to ~19, so 2.7e-4 absolute; 10 repeats × 3 random splits), 7e-7 on the
// random models. transformers' own DynamicCache shows the same noise on the tiny Llama: 1.2e-4 absolute
// over 20 random splits (python, torch 2.11). 1e-4 relative is 7× our worst; the negative control is ~100× more.
constexpr double kRelTol = 1e-4;

void expect_cached_equals_full(const LlamaModel& m, int64_t batch, int64_t seq, const std::string& what) {
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE(what + ", seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  at::NoGradGuard no_grad;
  const at::Tensor ids = at::randint(m.config().vocab_size, {batch, seq}, at::make_generator<at::CPUGeneratorImpl>(seed), at::kLong);
  const at::Tensor full = m.forward(ids);  // [batch, seq, vocab]
  const double tol = kRelTol * full.abs().max().item<double>();
  for (int trial = 0; trial < 3; ++trial) {
    const auto blocks = random_blocks(seq, rng);
    std::string split;
    for (const int64_t n : blocks) split += std::to_string(n) + " ";
    SCOPED_TRACE("blocks " + split);
    // Capacity 0 (grows by doubling, copying the history) and exact (never grows).
    for (const int64_t capacity : {int64_t{0}, seq}) {
      const at::Tensor cached = cached_logits(m, ids, blocks, capacity);
      ASSERT_EQ(cached.sizes(), full.sizes());
      const double diff = (cached - full).abs().max().item<double>();
      EXPECT_LT(diff, tol) << "capacity " << capacity;
      if (trial == 0 && capacity == 0) std::cout << what << ": max |cached - full| logit " << diff << ", tolerance " << tol << "\n";
    }
  }
  // Negative control: a block fed to a fresh cache (its history and positions lost) is far from the
  // full pass, so the comparison above can fail.
  KvCache fresh(m.config(), batch, m.dtype(), m.device());
  const int64_t tail = std::min<int64_t>(3, seq - 1);
  const at::Tensor lost = m.forward_cached(ids.narrow(1, seq - tail, tail), fresh);
  const double lost_diff = (lost - full.narrow(1, seq - tail, tail)).abs().max().item<double>();
  std::cout << what << ": negative control (history lost) max |Δ logit| " << lost_diff << "\n";
  EXPECT_GT(lost_diff, 30 * tol);
}

TEST(KvCache, CachedLogitsEqualFullForwardOnTheTrainedTinyLlama) {
  const fs::path dir = shared_data() / "models" / "llama2c-xs-tok512-hf";
  if (!fs::exists(dir / "model.safetensors")) GTEST_SKIP() << "shared test model not found at " << dir;
  const LlamaModel m = LlamaModel::load(dir, {});
  expect_cached_equals_full(m, 1, 40, "llama2c-xs");
  expect_cached_equals_full(m, 2, 17, "llama2c-xs batch 2");
}

TEST(KvCache, CachedLogitsEqualFullForwardWithQkNorm) {
  expect_cached_equals_full(random_model(small_config(ModelFamily::kQwen3), 11), 2, 23, "qwen3");
}

TEST(KvCache, CachedLogitsEqualFullForwardWithSlidingWindow) {
  const ModelConfig c = small_config(ModelFamily::kMistral);
  const LlamaModel m = random_model(c, 12);
  expect_cached_equals_full(m, 2, 23, "mistral window 5");
  // The window matters at this length: without it the same weights give other logits.
  ModelConfig open = c;
  open.sliding_window.reset();
  at::NoGradGuard no_grad;
  const at::Tensor ids = at::randint(c.vocab_size, {1, 23}, at::kLong);
  const LlamaModel windowless = random_model(open, 12);
  const at::Tensor windowed = m.forward(ids);
  EXPECT_GT((windowed - windowless.forward(ids)).abs().max().item<double>(), 30 * kRelTol * windowed.abs().max().item<double>());
}

// The cached mask is the last `fresh` rows of the full mask (the rule attention_mask.h states), or
// undefined exactly when that block hides nothing from any query or is the plain causal first block.
TEST(KvCache, CachedMaskIsTheFullMaskRows) {
  for (const std::optional<int64_t> window : {std::optional<int64_t>{}, std::optional<int64_t>{1}, std::optional<int64_t>{3},
                                              std::optional<int64_t>{8}})
    for (int64_t cached = 0; cached <= 6; ++cached)
      for (int64_t fresh = 1; fresh <= 4; ++fresh) {
        const int64_t total = cached + fresh;
        SCOPED_TRACE("window " + (window ? std::to_string(*window) : "none") + " cached " + std::to_string(cached) +
                     " fresh " + std::to_string(fresh));
        at::Tensor full = build_attention_mask({}, 1, total, window, at::kCPU);
        if (!full.defined()) full = at::ones({total, total}, at::kBool).tril().view({1, 1, total, total});
        const at::Tensor rows = full.narrow(2, cached, fresh);
        const at::Tensor m = build_cached_attention_mask(cached, fresh, window, at::kCPU);
        if (!m.defined()) {
          // Plain causal over the block (empty cache), or one query that sees every key.
          EXPECT_TRUE(cached == 0 || (fresh == 1 && rows.all().item<bool>()));
          if (cached == 0) {
            EXPECT_TRUE(at::equal(rows, at::ones({fresh, fresh}, at::kBool).tril().view({1, 1, fresh, fresh})));
          }
          continue;
        }
        ASSERT_EQ(m.sizes(), at::IntArrayRef({1, 1, fresh, total}));
        EXPECT_TRUE(at::equal(m, rows));
      }
}

TEST(KvCache, GrowingKeepsTheHistoryAndShapesAreChecked) {
  ModelConfig c = small_config(ModelFamily::kLlama);
  KvCache cache(c, 2, at::kFloat, at::kCPU);
  const at::Tensor k1 = at::randn({2, 2, 3, 16}), v1 = at::randn({2, 2, 3, 16});
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) cache.append(l, k1, v1);
  cache.advance(3);
  const at::Tensor k2 = at::randn({2, 2, 5, 16}), v2 = at::randn({2, 2, 5, 16});
  const auto [k, v] = cache.append(1, k2, v2);  // grows from 3 to 8 tokens
  EXPECT_TRUE(at::equal(k, at::cat({k1, k2}, 2)));
  EXPECT_TRUE(at::equal(v, at::cat({v1, v2}, 2)));
  EXPECT_THROW(cache.append(0, at::randn({2, 4, 1, 16}), at::randn({2, 4, 1, 16})), c10::Error);  // kv heads
  EXPECT_THROW(cache.append(c.num_hidden_layers, k2, v2), c10::Error);
  EXPECT_THROW(cache.append(0, k1, v1), c10::Error);  // another block size than layer 1 appended
  EXPECT_THROW(cache.advance(6), c10::Error);         // 5 were appended
}

}  // namespace
}  // namespace qtrain
