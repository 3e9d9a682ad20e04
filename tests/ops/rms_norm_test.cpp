// Fused RMSNorm (ops/rms_norm.h) against the ATen composition it replaces (rms_norm_reference, which is
// transformers' LlamaRMSNorm op for op): outputs and input gradients on awkward shapes (H not a multiple of the
// 16 lanes, one row, no rows, strided views), fp32/bf16/fp16; eps (zero rows, eps-dominated rows); the
// reference path for a trainable weight and mixed dtypes; negative controls. DISABLED_Bench prints fused vs
// reference times (run with --gtest_also_run_disabled_tests --gtest_filter='RmsNorm.DISABLED_Bench').
#include "ops/rms_norm.h"

#include <ATen/Parallel.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/autograd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <random>
#include <string>
#include <vector>

namespace qtrain::ops {
namespace {

// Tolerances, |fused − reference| ≤ rtol·|reference| + atol·max|reference| elementwise. Observed maxima over
// 200 fresh seeds of FusedMatchesReference (all shapes, layouts and dtypes) in brackets, as a fraction of the bound.
//  - fp32: the row's sum of squares adds in another order than ATen's mean (16 lanes, then the tail, vs ATen's
//    cascade), so rstd differs by a few ulps: forward max rel diff 4.4e-7 [0.11]; about a third of the elements
//    are not bit-equal. Backward also adds its dot product in another order [0.016]. Bounds 4e-6 and 2e-5: the
//    rounding bound of a 4096-term fp32 sum is ~1e-5 relative, and the wrong-eps control moves y by ~5e-5.
//  - bf16/fp16: that rstd difference sometimes flips the rounding of x̂ = T(x·rstd) by one ulp of T, and then
//    w·x̂ rounds again: at most 2 ulps, i.e. 2·2^-7 (bf16) or 2·2^-10 (fp16) relative at the bottom of a binade,
//    with 25% slack for the rounding of the reference itself [bf16 0.67, max rel diff 1.3e-2; fp16 0.74,
//    1.75e-3]. Such flips are rare: at most 1% of a dtype's forward elements may differ [2.5e-4]. Backward
//    rounds once at the end, but the terms of gw·rstd − x·b cancel: rtol one ulp at the bottom of a binade
//    (2^-7, 2^-10) plus atol one ulp of the tensor's max (same factor) [bf16 0.34, fp16 0.33].
struct Tolerance {
  double fwd_rtol, fwd_atol;  // atol in units of max|reference|
  double bwd_rtol, bwd_atol;
  double max_mismatch_fraction;  // of forward elements not bit-equal, over all cases of a dtype
};

Tolerance tolerance(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return {4e-6, 0.0, 2e-5, 2e-5, 1.0};
    case at::kBFloat16: return {1.25 / 64, 0.0, 1.0 / 128, 1.0 / 128, 0.01};
    case at::kHalf: return {1.25 / 512, 0.0, 1.0 / 1024, 1.0 / 1024, 0.01};
    default: break;
  }
  ADD_FAILURE() << "no tolerance for dtype " << t;
  return {0, 0, 0, 0, 0};
}

struct Stats {
  double max_rel = 0.0;      // max |diff| / (|ref| + 1e-3·max|ref|), for the printed summary
  double worst_ratio = 0.0;  // max |diff| / (rtol·|ref| + atol·max|ref|): ≤ 1 passes
  double mismatch_fraction = 0.0;
};

Stats compare(const at::Tensor& actual, const at::Tensor& expected, double rtol, double atol) {
  Stats s;
  if (expected.numel() == 0) return s;
  const at::Tensor a = actual.to(at::kDouble), e = expected.to(at::kDouble);
  const at::Tensor diff = (a - e).abs();
  const double scale = e.abs().max().item<double>();
  const at::Tensor limit = rtol * e.abs() + atol * scale;
  s.worst_ratio = (diff / limit.clamp_min(1e-300)).max().item<double>();
  s.max_rel = scale > 0 ? (diff / (e.abs() + 1e-3 * scale)).max().item<double>() : diff.max().item<double>();
  s.mismatch_fraction = (a != e).to(at::kDouble).mean().item<double>();
  return s;
}

struct Result {
  at::Tensor y, gx;
};

// y = f(x, w, eps) and gx = d(y·R).sum()/dx by autograd.
Result run(const std::function<at::Tensor(const at::Tensor&, const at::Tensor&, double)>& f, const at::Tensor& x_in,
           const at::Tensor& w, double eps, const at::Tensor& R) {
  at::Tensor x = x_in.detach().requires_grad_(true);
  const at::Tensor y = f(x, w, eps);
  const auto g = torch::autograd::grad({(y * R).sum()}, {x});
  return {y.detach(), g[0]};
}

enum class Layout { kContiguous, kTransposed, kSliced };

// x [lead..., H] with the given memory layout, values with a per-row scale spread over three decades.
at::Tensor make_x(const std::vector<int64_t>& lead, int64_t H, Layout layout, at::ScalarType t, at::Generator& gen) {
  std::vector<int64_t> shape = lead;
  shape.push_back(H);
  std::vector<int64_t> rshape = lead;
  rshape.push_back(1);
  const at::Tensor values = (at::randn(shape, gen) * at::pow(10.0, at::rand(rshape, gen) * 3 - 1.5)).to(t);
  switch (layout) {
    case Layout::kContiguous: return values;
    case Layout::kTransposed: {
      // Stored [H, lead...] and viewed transposed: the last dim has a stride of rows.
      std::vector<int64_t> stored = {H};
      stored.insert(stored.end(), lead.begin(), lead.end());
      at::Tensor x = at::empty(stored, values.options()).movedim(0, -1);
      x.copy_(values);
      return x;
    }
    case Layout::kSliced: {
      // Every other element of a wider row: last-dim stride 2, row stride 2H + 1.
      std::vector<int64_t> stored = shape;
      stored.back() = 2 * H + 1;
      at::Tensor x = at::zeros(stored, values.options()).narrow(-1, 1, 2 * H).slice(-1, 0, 2 * H, 2);
      x.copy_(values);
      return x;
    }
  }
  ADD_FAILURE() << "unknown layout";
  return values;
}

const char* layout_name(Layout l) {
  switch (l) {
    case Layout::kContiguous: return "contiguous";
    case Layout::kTransposed: return "transposed";
    case Layout::kSliced: return "sliced";
  }
  return "?";
}

TEST(RmsNorm, FusedMatchesReference) {
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  at::Generator gen = at::detail::createCPUGenerator(seed);
  const std::vector<int64_t> hiddens = {1, 7, 63, 64, 513, 4096};
  const std::vector<std::vector<int64_t>> leads = {{1}, {3, 5}, {0}};
  for (const at::ScalarType t : {at::kFloat, at::kBFloat16, at::kHalf}) {
    const Tolerance tol = tolerance(t);
    Stats worst_f, worst_b;
    double mismatched = 0.0, total = 0.0;  // forward elements not bit-equal, over all cases of this dtype
    for (const int64_t H : hiddens)
      for (const auto& lead : leads)
        for (const Layout layout : {Layout::kContiguous, Layout::kTransposed, Layout::kSliced}) {
          SCOPED_TRACE(std::string(c10::toString(t)) + " H=" + std::to_string(H) + " lead=" +
                       c10::str(at::IntArrayRef(lead)) + " " + layout_name(layout));
          const at::Tensor x = make_x(lead, H, layout, t, gen);
          if (layout != Layout::kContiguous && H > 1 && x.numel() > H) {
            ASSERT_FALSE(x.is_contiguous());
          }
          const at::Tensor w = (1.0 + 0.5 * at::randn({H}, gen)).to(t);
          const at::Tensor R = at::randn(x.sizes(), gen).to(t);
          const double eps = 1e-6;
          const Result ref = run(rms_norm_reference, x, w, eps, R);
          const Result got = run(rms_norm, x, w, eps, R);
          ASSERT_EQ(got.y.scalar_type(), ref.y.scalar_type());
          ASSERT_EQ(got.y.sizes(), ref.y.sizes());
          ASSERT_EQ(got.gx.scalar_type(), ref.gx.scalar_type());
          const Stats f = compare(got.y, ref.y, tol.fwd_rtol, tol.fwd_atol);
          const Stats b = compare(got.gx, ref.gx, tol.bwd_rtol, tol.bwd_atol);
          EXPECT_LE(f.worst_ratio, 1.0) << "forward: max rel diff " << f.max_rel << ", rtol " << tol.fwd_rtol;
          mismatched += f.mismatch_fraction * static_cast<double>(x.numel());
          total += static_cast<double>(x.numel());
          EXPECT_LE(b.worst_ratio, 1.0) << "backward: max rel diff " << b.max_rel << ", rtol " << tol.bwd_rtol
                                        << " atol " << tol.bwd_atol << "·max|ref|";
          worst_f.max_rel = std::max(worst_f.max_rel, f.max_rel);
          worst_b.max_rel = std::max(worst_b.max_rel, b.max_rel);
          worst_f.worst_ratio = std::max(worst_f.worst_ratio, f.worst_ratio);
          worst_b.worst_ratio = std::max(worst_b.worst_ratio, b.worst_ratio);
        }
    EXPECT_LE(mismatched / total, tol.max_mismatch_fraction) << c10::toString(t) << ": forward elements not bit-equal";
    std::printf("[ rms_norm ] %s: forward max rel diff %.3g (%.3g of the bound; fraction not bit-equal %.3g), "
                "backward %.3g (%.3g of the bound)\n", c10::toString(t), worst_f.max_rel, worst_f.worst_ratio,
                mismatched / total, worst_b.max_rel, worst_b.worst_ratio);
  }
}

// Zero rows (rstd = 1/sqrt(eps), y = 0, gx = rstd·gw), rows far below eps, and several eps values.
TEST(RmsNorm, EpsHandling) {
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  at::Generator gen = at::detail::createCPUGenerator(seed);
  const int64_t H = 100;
  for (const double eps : {1e-6, 1e-5, 0.1, 3.0}) {
    SCOPED_TRACE("eps " + std::to_string(eps));
    at::Tensor x = at::randn({4, H}, gen);
    x[0].zero_();
    x[1].mul_(1e-6);  // eps-dominated
    x[3].mul_(1e3);
    const at::Tensor w = at::randn({H}, gen);
    const at::Tensor R = at::randn({4, H}, gen);
    const Result ref = run(rms_norm_reference, x, w, eps, R);
    const Result got = run(rms_norm, x, w, eps, R);
    const Tolerance tol = tolerance(at::kFloat);
    EXPECT_LE(compare(got.y, ref.y, tol.fwd_rtol, tol.fwd_atol).worst_ratio, 1.0);
    EXPECT_LE(compare(got.gx, ref.gx, tol.bwd_rtol, tol.bwd_atol).worst_ratio, 1.0);
    EXPECT_TRUE(at::equal(got.y[0], at::zeros({H}))) << "a zero row must normalise to zeros";
    const at::Tensor gx0_expected = R[0] * w / std::sqrt(static_cast<float>(eps));
    EXPECT_TRUE(at::allclose(got.gx[0], gx0_expected, 1e-5, 1e-6)) << "zero row: gx = rstd·R·w";
    EXPECT_TRUE(at::isfinite(got.gx).all().item<bool>());
  }
}

// The comparison must be able to fail: a wrong eps (fp32) or a perturbed weight element (bf16) is caught.
TEST(RmsNorm, NegativeControls) {
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  at::Generator gen = at::detail::createCPUGenerator(seed);
  const int64_t H = 513;
  {
    // eps 1e-4 vs 1e-6 on rows of mean square ~1 moves rstd by ~5e-5 relative: above the fp32 bound of 4e-6.
    const at::Tensor x = at::randn({8, H}, gen), w = at::randn({H}, gen), R = at::randn({8, H}, gen);
    const Result ref = run(rms_norm_reference, x, w, 1e-6, R);
    const Result wrong = run(rms_norm, x, w, 1e-4, R);
    const Tolerance tol = tolerance(at::kFloat);
    EXPECT_GT(compare(wrong.y, ref.y, tol.fwd_rtol, tol.fwd_atol).worst_ratio, 1.0) << "wrong eps not caught";
  }
  {
    // The largest weight element 1/4 larger: its column of y differs by ~25%, and its column of gx by
    // rstd·|gy·w|/4, about a tenth of max|gx| on the largest of 8 rows: far above the bf16 bounds (2^-6, 2^-7).
    const at::Tensor x = at::randn({8, H}, gen).to(at::kBFloat16);
    const at::Tensor w = (1.0 + 0.5 * at::randn({H}, gen)).to(at::kBFloat16);
    const at::Tensor R = at::randn({8, H}, gen).to(at::kBFloat16);
    at::Tensor w_bad = w.clone();
    w_bad[w.abs().argmax().item<int64_t>()].mul_(1.25);
    const Result ref = run(rms_norm_reference, x, w, 1e-6, R);
    const Result wrong = run(rms_norm, x, w_bad, 1e-6, R);
    const Tolerance tol = tolerance(at::kBFloat16);
    EXPECT_GT(compare(wrong.y, ref.y, tol.fwd_rtol, tol.fwd_atol).worst_ratio, 1.0) << "perturbed weight, forward";
    EXPECT_GT(compare(wrong.gx, ref.gx, tol.bwd_rtol, tol.bwd_atol).worst_ratio, 1.0) << "perturbed weight, backward";
  }
}

// A trainable weight takes the reference composition: same outputs bit for bit, and weight gets its gradient.
TEST(RmsNorm, TrainableWeightTakesReferencePath) {
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  at::Generator gen = at::detail::createCPUGenerator(seed);
  for (const at::ScalarType t : {at::kFloat, at::kBFloat16}) {
    const at::Tensor x0 = at::randn({3, 5, 64}, gen).to(t);
    const at::Tensor w0 = at::randn({64}, gen).to(t);
    const at::Tensor R = at::randn({3, 5, 64}, gen).to(t);
    auto grads = [&](const std::function<at::Tensor(const at::Tensor&, const at::Tensor&, double)>& f) {
      at::Tensor x = x0.clone().requires_grad_(true), w = w0.clone().requires_grad_(true);
      const at::Tensor y = f(x, w, 1e-5);
      const auto g = torch::autograd::grad({(y * R).sum()}, {x, w});
      return std::vector<at::Tensor>{y.detach(), g[0], g[1]};
    };
    const auto got = grads(rms_norm), ref = grads(rms_norm_reference);
    ASSERT_TRUE(got[2].defined()) << "weight got no gradient";
    EXPECT_TRUE(at::equal(got[0], ref[0])) << "y";
    EXPECT_TRUE(at::equal(got[1], ref[1])) << "grad x";
    EXPECT_TRUE(at::equal(got[2], ref[2])) << "grad weight";
  }
}

// Mixed dtypes (bf16 x, fp32 weight → fp32 result by type promotion) take the reference path too.
TEST(RmsNorm, MixedDtypesTakeReferencePath) {
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  at::Generator gen = at::detail::createCPUGenerator(seed);
  const at::Tensor x = at::randn({6, 40}, gen).to(at::kBFloat16), w = at::randn({40}, gen);
  const at::Tensor y = rms_norm(x, w, 1e-6);
  EXPECT_EQ(y.scalar_type(), at::kFloat);
  EXPECT_TRUE(at::equal(y, rms_norm_reference(x, w, 1e-6)));
}

// Without grad mode: the fused forward alone, the same bits as with a graph, and no graph attached.
TEST(RmsNorm, NoGradForwardEqualsGradForward) {
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  at::Generator gen = at::detail::createCPUGenerator(seed);
  const at::Tensor x = at::randn({2, 9, 130}, gen).to(at::kBFloat16).requires_grad_(true);
  const at::Tensor w = at::randn({130}, gen).to(at::kBFloat16);
  const at::Tensor with_grad = rms_norm(x, w, 1e-6);
  EXPECT_TRUE(with_grad.requires_grad());
  at::Tensor no_grad;
  {
    at::NoGradGuard guard;
    no_grad = rms_norm(x, w, 1e-6);
  }
  EXPECT_FALSE(no_grad.requires_grad());
  EXPECT_TRUE(at::equal(no_grad, with_grad.detach()));
}

TEST(RmsNorm, RejectsBadShapes) {
  EXPECT_THROW(rms_norm(at::randn({4, 8}), at::randn({7}), 1e-6), c10::Error);
  EXPECT_THROW(rms_norm(at::randn({4, 8}), at::randn({2, 4}), 1e-6), c10::Error);
  EXPECT_THROW(rms_norm(at::randn({}), at::randn({1}), 1e-6), c10::Error);
}

// Fused vs reference, forward + backward (y, then backward with gy = R), ms per call on this machine's threads.
TEST(RmsNorm, DISABLED_Bench) {
  at::Generator gen = at::detail::createCPUGenerator(1);
  using Clock = std::chrono::steady_clock;
  auto time_ms = [](const std::function<void()>& f) {
    for (int i = 0; i < 3; ++i) f();
    int iters = 0;
    const auto t0 = Clock::now();
    double ms = 0.0;
    while (ms < 300.0 || iters < 5) {
      f();
      ++iters;
      ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
    }
    return ms / iters;
  };
  std::printf("[ rms_norm bench ] threads %d\n", at::get_num_threads());
  for (const auto& shape : std::vector<std::vector<int64_t>>{{2048, 512}, {2048, 4096}})
    for (const at::ScalarType t : {at::kFloat, at::kBFloat16}) {
      const at::Tensor x0 = at::randn(shape, gen).to(t);
      const at::Tensor w = at::randn({shape[1]}, gen).to(t);
      const at::Tensor R = at::randn(shape, gen).to(t);
      auto fwd_bwd = [&](const std::function<at::Tensor(const at::Tensor&, const at::Tensor&, double)>& f) {
        return [&, f] {
          at::Tensor x = x0.detach().requires_grad_(true);
          const at::Tensor y = f(x, w, 1e-6);
          torch::autograd::backward({y}, {R});
        };
      };
      auto fwd = [&](const std::function<at::Tensor(const at::Tensor&, const at::Tensor&, double)>& f) {
        return [&, f] {
          at::NoGradGuard guard;
          f(x0, w, 1e-6);
        };
      };
      const double rf = time_ms(fwd_bwd(rms_norm_reference)), ff = time_ms(fwd_bwd(rms_norm));
      const double r0 = time_ms(fwd(rms_norm_reference)), f0 = time_ms(fwd(rms_norm));
      std::printf("[ rms_norm bench ] [%ld, %ld] %-8s fwd+bwd: reference %.3f ms, fused %.3f ms (%.2fx); "
                  "fwd no-grad: reference %.3f ms, fused %.3f ms (%.2fx)\n",
                  static_cast<long>(shape[0]), static_cast<long>(shape[1]), c10::toString(t), rf, ff, rf / ff, r0, f0,
                  r0 / f0);
    }
}

}  // namespace
}  // namespace qtrain::ops
