// The fused rotary kernel (ops/rotary.h) against its ATen composition: forward and backward bit for bit
// (the kernel rounds as the composition does), on awkward head sizes, layouts and dtypes; and the
// composition against the pair formula in double, so the oracle itself is pinned.
#include <gtest/gtest.h>

#include <ATen/CPUGeneratorImpl.h>
#include <torch/autograd.h>

#include <random>

#include "ops/rotary.h"

namespace qtrain::ops {
namespace {

struct Case {
  int64_t b, h, s, d;
  bool transposed;  // x as q and k are: a transposed [b, s, h, d]
};

struct Inputs {
  at::Tensor x, cos, sin;
};

Inputs make_inputs(const Case& c, at::ScalarType dtype, at::Generator gen) {
  at::Tensor x = c.transposed ? at::randn({c.b, c.s, c.h, c.d}, gen).transpose(1, 2) : at::randn({c.b, c.h, c.s, c.d}, gen);
  // Angles as rope_tables makes them (both halves the same frequencies), positions shuffled per row.
  at::Tensor ang = at::rand({c.b, c.s, c.d / 2}, gen) * 300;
  ang = at::cat({ang, ang}, -1);
  return {x.to(dtype), ang.cos().to(dtype), ang.sin().to(dtype)};
}

// Forward and the gradient of (out · r).sum() through the op.
std::pair<at::Tensor, at::Tensor> run(at::Tensor (*op)(const at::Tensor&, const at::Tensor&, const at::Tensor&),
                                      const Inputs& in, const at::Tensor& r) {
  at::Tensor x = in.x.detach().requires_grad_(true);
  at::Tensor out = op(x, in.cos, in.sin);
  (out.to(at::kFloat) * r).sum().backward();
  return {out.detach(), x.grad()};
}

uint64_t fresh_seed() { return std::random_device{}(); }

TEST(Rotary, FusedEqualsCompositionBitForBit) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  const std::vector<Case> cases = {{1, 1, 1, 2, false},   {2, 3, 5, 64, true},  {1, 4, 7, 34, true},
                                   {3, 2, 9, 130, false}, {2, 8, 33, 128, true}, {1, 1, 300, 96, true},
                                   {2, 5, 4, 32, false}};
  for (const at::ScalarType dtype : {at::kFloat, at::kBFloat16, at::kHalf}) {
    for (const Case& c : cases) {
      SCOPED_TRACE(std::string(c10::toString(dtype)) + " [" + std::to_string(c.b) + ", " + std::to_string(c.h) + ", " +
                   std::to_string(c.s) + ", " + std::to_string(c.d) + "]" + (c.transposed ? " transposed" : ""));
      const Inputs in = make_inputs(c, dtype, gen);
      const at::Tensor r = at::randn(in.x.sizes(), gen);
      const auto [ref_out, ref_grad] = run(&rotary_reference, in, r);
      const auto [out, grad] = run(&rotary, in, r);
      EXPECT_TRUE(at::equal(out, ref_out)) << "forward max diff " << (out - ref_out).abs().max().item<double>();
      EXPECT_TRUE(at::equal(grad, ref_grad)) << "backward max diff " << (grad - ref_grad).abs().max().item<double>();
      EXPECT_EQ(out.strides(), in.x.strides()) << "the output keeps x's layout";
      // Without grad (evaluation, generation) the plain fused forward.
      at::NoGradGuard no_grad;
      EXPECT_TRUE(at::equal(rotary(in.x, in.cos, in.sin), ref_out));
    }
  }
}

TEST(Rotary, TablesBroadcastOverTheBatchAndNeedNotBeContiguous) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  const Inputs in = make_inputs({3, 2, 6, 16, true}, at::kFloat, gen);
  const at::Tensor cos1 = in.cos.narrow(0, 0, 1), sin1 = in.sin.narrow(0, 0, 1);
  EXPECT_TRUE(at::equal(rotary(in.x, cos1, sin1), rotary_reference(in.x, cos1, sin1)));
  // Tables stored [b, d, s] and viewed [b, s, d]: not unit stride in d.
  const at::Tensor cos_t = in.cos.transpose(1, 2).contiguous().transpose(1, 2);
  const at::Tensor sin_t = in.sin.transpose(1, 2).contiguous().transpose(1, 2);
  EXPECT_TRUE(at::equal(rotary(in.x, cos_t, sin_t), rotary_reference(in.x, in.cos, in.sin)));
}

// The oracle: each pair rotated by its angle, in double.
TEST(Rotary, CompositionRotatesEachPairByItsAngle) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  const Inputs in = make_inputs({2, 3, 4, 8, false}, at::kDouble, gen);
  const at::Tensor out = rotary_reference(in.x, in.cos, in.sin);
  const at::Tensor x1 = in.x.narrow(-1, 0, 4), x2 = in.x.narrow(-1, 4, 4);
  const at::Tensor c = in.cos.narrow(-1, 0, 4).unsqueeze(1), s = in.sin.narrow(-1, 0, 4).unsqueeze(1);
  EXPECT_TRUE(at::allclose(out.narrow(-1, 0, 4), x1 * c - x2 * s, 0, 1e-12));
  EXPECT_TRUE(at::allclose(out.narrow(-1, 4, 4), x2 * c + x1 * s, 0, 1e-12));
  // Negative control: the opposite rotation is not it.
  EXPECT_FALSE(at::allclose(out.narrow(-1, 0, 4), x1 * c + x2 * s, 0, 1e-3));
}

TEST(Rotary, BadShapesNameWhatWasExpected) {
  const at::Tensor x = at::zeros({1, 2, 3, 5});
  const at::Tensor t = at::zeros({1, 3, 5});
  try {
    rotary(x, t, t);
    FAIL() << "odd head_dim accepted";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("even head_dim"), std::string::npos) << e.what();
  }
  try {
    rotary(at::zeros({1, 2, 3, 4}), at::zeros({1, 4, 4}), at::zeros({1, 4, 4}));
    FAIL() << "tables of another length accepted";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("[batch, seq, head_dim] = [1, 3, 4]"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace qtrain::ops
