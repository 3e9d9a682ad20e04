// AdamW (bitsandbytes semantics, formats.md §2.4): the CPU fast path and the libtorch fallback equal the scalar
// reference bit for bit on awkward sizes, dtypes and hyper-parameters; a multi-step trajectory stays within a
// derived bound of a double-precision re-implementation; torch.optim's decay order (a deliberately wrong
// variant) is detected; bad arguments are rejected with a message; with a GPU the CUDA kernel equals the CPU
// reference and the fallback on the device bit for bit. The bitsandbytes oracle is tests/oracle/test_adamw_bnb.py.
#include "ops/adamw.h"
#include "ops/adamw_math.h"

#include <gtest/gtest.h>
#include <torch/cuda.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

namespace {

using qtrain::ops::AdamWParams;
using qtrain::ops::AdamWState;
namespace cpu = qtrain::ops::adamw_cpu;
namespace am = qtrain::ops::adamw_math;

// Awkward sizes: one element, a prime below a SIMD width, around the parallel grain (8192), and a large prime.
const std::vector<int64_t> kSizes = {1, 7, 8191, 8193, 65537, 1000003};

struct HyperCase {
  std::string name;
  AdamWParams params;
  double gnorm_scale;
};

std::vector<HyperCase> hyper_cases() {
  return {
      {"qlora_wd0", AdamWParams{2e-4, 0.9, 0.999, 1e-8, 0.0}, 1.0},
      {"wd", AdamWParams{1e-3, 0.9, 0.999, 1e-8, 0.01}, 1.0},
      {"gnorm_scale", AdamWParams{1e-3, 0.9, 0.999, 1e-8, 0.0}, 0.37},
      {"wd_gnorm_big_eps", AdamWParams{5e-2, 0.8, 0.99, 1e-3, 0.1}, 2.5},
  };
}

// Fresh random tensors per call; the seed is part of every failure message through SCOPED_TRACE.
struct Problem {
  at::Tensor p, g, m, v;  // p, g in the param dtype; m, v float32 (a state a few steps in: m signed, v >= 0)
};

Problem make_problem(int64_t n, at::ScalarType dtype, uint64_t seed) {
  at::Generator gen = at::detail::createCPUGenerator(seed);
  Problem pr;
  pr.p = at::randn({n}, gen, at::kFloat).to(dtype);
  pr.g = (at::randn({n}, gen, at::kFloat) * 1e-2).to(dtype);
  pr.m = at::randn({n}, gen, at::kFloat) * 1e-3;
  pr.v = at::rand({n}, gen, at::kFloat) * 1e-5;
  if (n > 4) {
    pr.g[0] = 0.0;  // zero gradient on a zero state: the update must be exactly 0 (m = 0, 0 / eps*c2)
    pr.m[0] = 0.0;
    pr.v[0] = 0.0;
    pr.v[1] = 0.0;  // denominator eps*c2 alone
    pr.g[2] = 1e3;  // a spike
  }
  return pr;
}

// Correctly rounded float32 sqrt through double (at::sqrt on float32 CPU tensors is not; see ops/adamw.cpp).
at::Tensor sqrt_rn(const at::Tensor& t) { return t.to(at::kDouble).sqrt().to(at::kFloat); }

uint32_t bits(float x) {
  uint32_t b;
  std::memcpy(&b, &x, 4);
  return b;
}

// Bitwise comparison of two tensors of the same dtype (bf16 compared through its exact float32 value's bits).
void expect_same_bits(const at::Tensor& actual, const at::Tensor& expected, const std::string& what) {
  ASSERT_EQ(actual.scalar_type(), expected.scalar_type()) << what;
  ASSERT_EQ(actual.numel(), expected.numel()) << what;
  const at::Tensor a = actual.cpu().to(at::kFloat).contiguous();
  const at::Tensor e = expected.cpu().to(at::kFloat).contiguous();
  const float* pa = a.data_ptr<float>();
  const float* pe = e.data_ptr<float>();
  int64_t mismatches = 0;
  int64_t first = -1;
  for (int64_t i = 0; i < a.numel(); ++i) {
    if (bits(pa[i]) != bits(pe[i])) {
      if (first < 0) first = i;
      ++mismatches;
    }
  }
  EXPECT_EQ(mismatches, 0) << what << ": " << mismatches << " of " << a.numel()
                           << " elements differ; first at index " << first << ": expected "
                           << (first >= 0 ? pe[first] : 0.0f) << " (bits 0x" << std::hex
                           << (first >= 0 ? bits(pe[first]) : 0u) << "), found " << std::dec
                           << (first >= 0 ? pa[first] : 0.0f) << " (bits 0x" << std::hex
                           << (first >= 0 ? bits(pa[first]) : 0u) << ")" << std::dec;
}

// Runs the scalar reference on copies of the problem; returns {p, m, v} after one step.
Problem run_reference(const Problem& in, int64_t step, const HyperCase& hc) {
  Problem out{in.p.clone(), in.g, in.m.clone(), in.v.clone()};
  const am::StepScalars s = qtrain::ops::adamw_step_scalars(hc.params, step, hc.gnorm_scale);
  const int64_t n = out.p.numel();
  if (out.p.scalar_type() == at::kFloat) {
    cpu::step_reference(out.p.data_ptr<float>(), out.g.data_ptr<float>(), out.m.data_ptr<float>(),
                        out.v.data_ptr<float>(), n, s);
  } else {
    cpu::step_reference(out.p.data_ptr<c10::BFloat16>(), out.g.data_ptr<c10::BFloat16>(), out.m.data_ptr<float>(),
                        out.v.data_ptr<float>(), n, s);
  }
  return out;
}

using StepFn = void (*)(at::Tensor&, const at::Tensor&, AdamWState&, int64_t, const AdamWParams&, double);

// Runs a tensor-API path (adamw_step or the fallback) on copies of the problem on `device`.
Problem run_path(StepFn fn, const Problem& in, int64_t step, const HyperCase& hc, at::Device device) {
  at::Tensor p = in.p.to(device).clone();
  AdamWState st;
  st.exp_avg = in.m.to(device).clone();
  st.exp_avg_sq = in.v.to(device).clone();
  fn(p, in.g.to(device), st, step, hc.params, hc.gnorm_scale);
  return Problem{p, in.g, st.exp_avg, st.exp_avg_sq};
}

void expect_problem_equal(const Problem& actual, const Problem& expected, const std::string& what) {
  expect_same_bits(actual.p, expected.p, what + " param");
  expect_same_bits(actual.m, expected.m, what + " exp_avg");
  expect_same_bits(actual.v, expected.v, what + " exp_avg_sq");
}

void compare_paths_on(at::Device device, StepFn fn, const std::string& path_name) {
  const uint64_t base_seed = std::random_device{}();
  SCOPED_TRACE("base seed " + std::to_string(base_seed));
  uint64_t seed = base_seed;
  for (const at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
    for (const int64_t n : kSizes) {
      for (const HyperCase& hc : hyper_cases()) {
        for (const int64_t step : {int64_t{1}, int64_t{2}, int64_t{1000}}) {
          const Problem pr = make_problem(n, dtype, ++seed);
          const std::string what = path_name + " " + std::string(c10::toString(dtype)) + " n=" + std::to_string(n) +
                                   " " + hc.name + " step=" + std::to_string(step) + " seed=" + std::to_string(seed);
          expect_problem_equal(run_path(fn, pr, step, hc, device), run_reference(pr, step, hc), what);
          if (::testing::Test::HasFailure()) return;  // one case is enough to debug; avoid thousands of lines
        }
      }
    }
  }
}

TEST(AdamWCpu, FastEqualsReference) { compare_paths_on(at::kCPU, &qtrain::ops::adamw_step, "fast"); }

TEST(AdamWCpu, FallbackEqualsReference) {
  compare_paths_on(at::kCPU, &qtrain::ops::adamw_step_fallback, "fallback");
}

// Raw fast path with 1..4 threads' worth of chunking is covered above; this checks the reference is not
// trivially equal to the input (poisoned state must change) so the equality tests can fail.
TEST(AdamWCpu, StepChangesEveryElementWithNonzeroGradient) {
  const Problem pr = make_problem(1000, at::kFloat, 12345);
  const HyperCase hc = hyper_cases()[0];
  const Problem out = run_reference(pr, 1, hc);
  const at::Tensor moved = (out.p != pr.p) | (pr.g == 0);
  EXPECT_TRUE(moved.all().item<bool>()) << "expected every element with g != 0 to move, "
                                        << (~moved).sum().item<int64_t>() << " did not";
  EXPECT_EQ(out.p[0].item<float>(), pr.p[0].item<float>()) << "g = m = v = 0 must leave the param unchanged";
}

// ---- trajectory vs double precision ----

// The same update in double with the double hyper-parameters (no float32 scalars): what the float32 path
// approximates. Returns the param after `steps` steps of the gradient sequence `grads`.
std::vector<double> double_trajectory(const std::vector<float>& p0, const std::vector<std::vector<float>>& grads,
                                      const AdamWParams& hp, double gnorm_scale, std::vector<double>* max_dir) {
  const size_t n = p0.size();
  std::vector<double> p(p0.begin(), p0.end()), m(n, 0.0), v(n, 0.0);
  max_dir->assign(n, 0.0);
  for (size_t t = 1; t <= grads.size(); ++t) {
    const double c1 = 1.0 - std::pow(hp.beta1, static_cast<double>(t));
    const double c2 = std::sqrt(1.0 - std::pow(hp.beta2, static_cast<double>(t)));
    for (size_t i = 0; i < n; ++i) {
      const double g = gnorm_scale * grads[t - 1][i];
      m[i] = hp.beta1 * m[i] + (1.0 - hp.beta1) * g;
      v[i] = hp.beta2 * v[i] + (1.0 - hp.beta2) * g * g;
      const double dir = m[i] / (std::sqrt(v[i]) + hp.eps * c2);
      (*max_dir)[i] = std::max((*max_dir)[i], std::abs(dir * c2 / c1));
      p[i] += -hp.lr * c2 / c1 * dir;
      if (hp.weight_decay > 0.0) p[i] *= 1.0 - hp.lr * hp.weight_decay;
    }
  }
  return p;
}

TEST(AdamWCpu, TrajectoryMatchesDoublePrecision) {
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  constexpr int64_t kN = 4099;
  constexpr int kSteps = 50;
  for (const HyperCase& hc : hyper_cases()) {
    SCOPED_TRACE(hc.name);
    std::vector<float> p0(kN);
    for (auto& x : p0) x = normal(rng);
    std::vector<std::vector<float>> grads(kSteps, std::vector<float>(kN));
    for (auto& gs : grads) {
      for (auto& x : gs) x = 1e-2f * normal(rng) + 3e-3f;  // a bias so m does not average to zero
    }
    at::Tensor p = at::from_blob(p0.data(), {kN}, at::kFloat).clone();
    AdamWState st = qtrain::ops::make_adamw_state(p);
    for (int t = 1; t <= kSteps; ++t) {
      const at::Tensor g = at::from_blob(grads[t - 1].data(), {kN}, at::kFloat).clone();
      qtrain::ops::adamw_step(p, g, st, t, hc.params, hc.gnorm_scale);
    }
    std::vector<double> max_dir;
    const std::vector<double> expected = double_trajectory(p0, grads, hc.params, hc.gnorm_scale, &max_dir);
    // Bound per step: rounding p (half an ulp of |p| <= 2^-24 |p|, twice with decay), plus the update's
    // relative error: ~10 float32 roundings on m, v, sqrt, the division and the scalars, each <= 2^-24,
    // times |update| <= lr * max|m̂/(sqrt(v̂)+eps)|, with margin 4x for the error carried in m and v.
    // Summed over the steps.
    const float* pq = p.data_ptr<float>();
    double worst_ratio = 0.0, max_tol = 0.0, max_moved = 0.0;
    int64_t worst_i = 0;
    for (int64_t i = 0; i < kN; ++i) {
      const double scale_p = std::max(std::abs(expected[i]), static_cast<double>(std::abs(p0[i])));
      const double per_step = 2.0 * std::ldexp(scale_p, -24) + 40.0 * std::ldexp(hc.params.lr * max_dir[i], -24);
      const double tol = kSteps * per_step;
      const double err = std::abs(static_cast<double>(pq[i]) - expected[i]);
      max_tol = std::max(max_tol, tol);
      max_moved = std::max(max_moved, std::abs(expected[i] - p0[i]));
      if (err / tol > worst_ratio) {
        worst_ratio = err / tol;
        worst_i = i;
      }
    }
    EXPECT_LE(worst_ratio, 1.0) << "element " << worst_i << ": expected " << expected[worst_i] << " (double), found "
                                << pq[worst_i] << ", error / bound = " << worst_ratio;
    // The bound must not be vacuous: the trajectory moves the params far more than the largest tolerance.
    EXPECT_GT(max_moved, 100.0 * max_tol) << "expected the params to move well beyond the tolerance " << max_tol
                                          << ", moved at most " << max_moved;
  }
}

// ---- negative control: torch.optim.AdamW's order (decay first) ----

TEST(AdamWCpu, TorchDecayOrderDiffersWhenWeightDecay) {
  const Problem pr = make_problem(4096, at::kFloat, 777);
  for (const double wd : {0.0, 0.1}) {
    const HyperCase hc{"", AdamWParams{1e-2, 0.9, 0.999, 1e-8, wd}, 1.0};
    const Problem ours = run_reference(pr, 3, hc);
    // torch.optim.AdamW: p *= 1 - lr*wd first, then the Adam step on the decayed p.
    const am::StepScalars s = qtrain::ops::adamw_step_scalars(hc.params, 3, 1.0);
    at::Tensor p = pr.p.clone();
    if (s.apply_decay) p = p * static_cast<double>(s.decay);
    const at::Tensor m = pr.m * static_cast<double>(s.beta1) + pr.g * static_cast<double>(s.one_minus_beta1);
    const at::Tensor v = pr.v * static_cast<double>(s.beta2) + (pr.g * pr.g) * static_cast<double>(s.one_minus_beta2);
    p = p + (m / (sqrt_rn(v) + static_cast<double>(s.eps_c2))) * static_cast<double>(s.step_size);
    const int64_t differ = (p != ours.p).sum().item<int64_t>();
    if (wd > 0.0) {
      // decay-first differs by lr*wd*update ~ 1e-3 * 1e-2 relative to p's update: most elements must differ.
      EXPECT_GT(differ, 4096 / 2) << "expected decay-before-step (torch order) to differ from bnb's "
                                     "decay-after-step on most elements with wd = 0.1, differ on "
                                  << differ;
    } else {
      EXPECT_EQ(differ, 0) << "with wd = 0 the two orders are the same computation, yet " << differ << " differ";
    }
  }
}

// bf16: the decay multiplies the ROUNDED param (two roundings). A single-rounding variant must differ
// somewhere, or the test of the two-rounding order proves nothing.
TEST(AdamWCpu, Bf16RoundsAfterStepAndAfterDecay) {
  const Problem pr = make_problem(65536, at::kBFloat16, 99);
  const HyperCase hc{"", AdamWParams{1e-2, 0.9, 0.999, 1e-8, 0.3}, 1.0};
  const Problem ours = run_reference(pr, 2, hc);
  const am::StepScalars s = qtrain::ops::adamw_step_scalars(hc.params, 2, 1.0);
  const at::Tensor g = pr.g.to(at::kFloat);
  const at::Tensor m = pr.m * static_cast<double>(s.beta1) + g * static_cast<double>(s.one_minus_beta1);
  const at::Tensor v = pr.v * static_cast<double>(s.beta2) + (g * g) * static_cast<double>(s.one_minus_beta2);
  const at::Tensor p32 = pr.p.to(at::kFloat) + (m / (sqrt_rn(v) + static_cast<double>(s.eps_c2))) *
                                                     static_cast<double>(s.step_size);
  const at::Tensor once = (p32 * static_cast<double>(s.decay)).to(at::kBFloat16);
  const int64_t differ = (once != ours.p).sum().item<int64_t>();
  EXPECT_GT(differ, 0) << "expected single rounding to differ from bnb's double rounding on some of 65536 bf16 "
                          "elements, found none";
}

// ---- argument checks ----

void expect_throws_with(const std::function<void()>& f, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "expected an error mentioning '" << needle << "', none thrown";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos)
        << "expected the error to mention '" << needle << "', found: " << e.what();
  }
}

TEST(AdamWCpu, RejectsBadArguments) {
  at::Tensor p = at::randn({4, 5});
  const at::Tensor g = at::randn({4, 5});
  AdamWState st = qtrain::ops::make_adamw_state(p);
  const AdamWParams hp;
  expect_throws_with([&] { qtrain::ops::adamw_step(p, g, st, 0, hp); }, "1-based");
  expect_throws_with([&] { qtrain::ops::adamw_step(p, at::randn({5, 4}), st, 1, hp); }, "grad must have the param's shape");
  expect_throws_with([&] { qtrain::ops::adamw_step(p, g.to(at::kBFloat16), st, 1, hp); }, "grad must have the param's dtype");
  expect_throws_with([&] { qtrain::ops::adamw_step(p, at::Tensor(), st, 1, hp); }, "grad is undefined");
  expect_throws_with([&] { qtrain::ops::adamw_step(p, g, st, 1, AdamWParams{1e-3, 1.0}); }, "beta1");
  expect_throws_with([&] { qtrain::ops::adamw_step(p, g, st, 1, AdamWParams{1e-3, 0.9, -0.1}); }, "beta2");
  expect_throws_with([&] { qtrain::ops::adamw_step(p, g, st, 1, AdamWParams{-1.0}); }, "lr");
  expect_throws_with([&] { qtrain::ops::adamw_step(p, g, st, 1, AdamWParams{1e-3, 0.9, 0.999, 1e-8, -1.0}); },
                     "weight_decay");
  expect_throws_with([&] { qtrain::ops::adamw_step(p, g, st, 1, hp, 0.0); }, "gnorm_scale");
  AdamWState wrong = st;
  wrong.exp_avg = at::zeros({4, 5}, at::kBFloat16);
  expect_throws_with([&] { qtrain::ops::adamw_step(p, g, wrong, 1, hp); }, "state.exp_avg must be float32");
  wrong = st;
  wrong.exp_avg_sq = at::zeros({20});
  expect_throws_with([&] { qtrain::ops::adamw_step(p, g, wrong, 1, hp); }, "state.exp_avg_sq must have the param's shape");
  wrong = st;
  wrong.exp_avg_sq = wrong.exp_avg;
  expect_throws_with([&] { qtrain::ops::adamw_step(p, g, wrong, 1, hp); }, "distinct");
  at::Tensor half = p.to(at::kHalf);
  expect_throws_with([&] { qtrain::ops::make_adamw_state(half); }, "float32 or bfloat16");
  at::Tensor strided = at::randn({5, 4}).t();
  AdamWState st2 = qtrain::ops::make_adamw_state(strided);
  expect_throws_with([&] { qtrain::ops::adamw_step(strided, g, st2, 1, hp); }, "contiguous");
  // Nothing was modified by the rejected calls.
  EXPECT_TRUE(at::all(st.exp_avg == 0).item<bool>()) << "a rejected call must not touch the state";
}

// A leaf that requires grad (an adapter parameter) is updated in place without an autograd error, keeps
// requires_grad, and its version counter moves so a stale saved tensor would be detected.
TEST(AdamWCpu, UpdatesRequiresGradLeafInPlace) {
  for (const auto fn : {&qtrain::ops::adamw_step, &qtrain::ops::adamw_step_fallback}) {
    at::Tensor p = at::randn({3, 7}).set_requires_grad(true);
    const at::Tensor before = p.detach().clone();
    const void* storage = p.data_ptr();
    const auto version = p._version();
    AdamWState st = qtrain::ops::make_adamw_state(p);
    fn(p, at::ones({3, 7}), st, 1, AdamWParams{0.1}, 1.0);
    EXPECT_TRUE(p.requires_grad()) << "expected the param to stay a leaf that requires grad";
    EXPECT_TRUE(p.is_leaf()) << "expected the param to stay a leaf";
    EXPECT_EQ(p.data_ptr(), storage) << "expected the update in place";
    EXPECT_GT(p._version(), version) << "expected the version counter to move";
    // g = 1 everywhere, step 1: m̂ = 1, sqrt(v̂) = 1, so p decreases by lr / (1 + eps) ~ 0.1.
    EXPECT_TRUE(at::allclose(p.detach(), before - 0.1, 1e-6, 1e-6)) << "expected p - lr after one step of g = 1";
  }
}

// ---- CUDA ----

TEST(AdamWGpu, KernelEqualsCpuReferenceAndDeviceFallback) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  compare_paths_on(at::Device(at::kCUDA, 0), &qtrain::ops::adamw_step, "cuda kernel");
  compare_paths_on(at::Device(at::kCUDA, 0), &qtrain::ops::adamw_step_fallback, "cuda fallback");
}

TEST(AdamWGpu, TrajectoryEqualsCpu) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  for (const at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
    const Problem pr = make_problem(300007, dtype, 4242);
    at::Tensor pc = pr.p.clone();
    at::Tensor pg = pr.p.cuda();
    AdamWState sc = qtrain::ops::make_adamw_state(pc);
    AdamWState sg = qtrain::ops::make_adamw_state(pg);
    const AdamWParams hp{1e-3, 0.9, 0.999, 1e-8, 0.01};
    for (int t = 1; t <= 20; ++t) {
      const at::Tensor g = (pr.g.to(at::kFloat) * (1.0 + 0.1 * t)).to(dtype);
      qtrain::ops::adamw_step(pc, g, sc, t, hp);
      qtrain::ops::adamw_step(pg, g.cuda(), sg, t, hp);
    }
    expect_same_bits(pg, pc, std::string("20-step trajectory ") + c10::toString(dtype) + " param");
    expect_same_bits(sg.exp_avg_sq, sc.exp_avg_sq, std::string("20-step trajectory ") + c10::toString(dtype) + " v");
  }
}

}  // namespace
