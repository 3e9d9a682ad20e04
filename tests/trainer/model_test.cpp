// Pieces of the model that have their own invariants: the attention mask and RoPE.
#include <gtest/gtest.h>

#include "trainer/model/model.h"
#include "trainer/model/rope.h"

namespace qtrain {
namespace {

TEST(AttentionMask, CausalPaddingAndWindow) {
  // Row 0: [pad, tok, tok, tok] (left padded); row 1: no padding.
  at::Tensor am = at::tensor({0, 1, 1, 1, 1, 1, 1, 1}, at::kLong).view({2, 4});
  at::Tensor m = build_attention_mask(am, 2, 4, std::nullopt, at::kCPU);
  ASSERT_EQ(m.sizes(), at::IntArrayRef({2, 1, 4, 4}));
  for (int q = 0; q < 4; ++q)
    for (int k = 0; k < 4; ++k) {
      EXPECT_EQ(m[1][0][q][k].item<bool>(), k <= q);
      const bool expect0 = q == 0 ? k == 0 : (k <= q && k >= 1);  // pad query sees only itself
      EXPECT_EQ(m[0][0][q][k].item<bool>(), expect0) << q << "," << k;
    }
  at::Tensor w = build_attention_mask({}, 1, 5, 2, at::kCPU);
  for (int q = 0; q < 5; ++q)
    for (int k = 0; k < 5; ++k) EXPECT_EQ(w[0][0][q][k].item<bool>(), k <= q && k > q - 2);
  EXPECT_FALSE(build_attention_mask({}, 2, 4, std::nullopt, at::kCPU).defined()) << "plain causal uses SDPA's is_causal";
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
