// Fused AdamW (ops/adamw_fused.h): bnb's dynamic maps (anchors of formats.md §1.7, and the signed map equals the
// NF4 double-quant one); the bisection picks a nearest code; the 8-bit fast path equals the scalar reference
// bit for bit on awkward sizes (tail blocks, NaN/Inf gradients, a zero block) and dtypes; any cut of a parameter
// into segments at block boundaries gives the same bits; the fused 32-bit path equals the per-tensor adamw_step
// (so checkpoints of both load into each other); 8-bit state tracks 32-bit AdamW; bad arguments are refused;
// with a GPU, the kernels equal the CPU. The bitsandbytes oracle is tests/oracle/test_adamw8bit_bnb.py.
#include "ops/adamw_fused.h"
#include "ops/adamw8bit_math.h"
#include "ops/nf4.h"

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

namespace ops = qtrain::ops;
namespace a8 = qtrain::ops::adamw8bit_math;
using ops::AdamWParams;

uint32_t bits(float x) {
  uint32_t b;
  std::memcpy(&b, &x, 4);
  return b;
}

// Bitwise equality of any two tensors (compared as raw bytes), naming the first difference.
void expect_same_bytes(const at::Tensor& actual, const at::Tensor& expected, const std::string& what) {
  ASSERT_EQ(actual.scalar_type(), expected.scalar_type()) << what;
  ASSERT_EQ(actual.numel(), expected.numel()) << what;
  const at::Tensor a = actual.cpu().contiguous().view(at::kByte);
  const at::Tensor e = expected.cpu().contiguous().view(at::kByte);
  const at::Tensor diff = (a != e).nonzero();
  EXPECT_EQ(diff.size(0), 0) << what << ": " << diff.size(0) << " bytes differ; first at byte "
                             << (diff.size(0) ? diff[0][0].item<int64_t>() : -1) << " (element size "
                             << actual.element_size() << ")";
}

struct Run8 {
  at::Tensor p;
  ops::AdamW8bitState st;
};

// Gradients with a per-element bias, noise, a spike, an all-zero block and (optionally) NaN/Inf elements.
at::Tensor make_grads(int64_t steps, int64_t n, at::ScalarType dtype, uint64_t seed, bool nonfinite) {
  at::Generator gen = at::detail::createCPUGenerator(seed);
  at::Tensor g = at::randn({steps, n}, gen) * 1e-2 + at::randn({n}, gen) * 3e-3;
  if (n > 600) g.narrow(1, 256, 256).zero_();
  if (n > 3) g[steps / 2][1] = 5.0;
  if (nonfinite && n > 5) {
    g[1][3] = std::numeric_limits<float>::quiet_NaN();
    g[2][5] = -std::numeric_limits<float>::infinity();
  }
  return g.to(dtype);
}

// `steps` steps of 8-bit AdamW; path: "fast" (per-tensor API), "reference", or "chunksK" (one fused call
// over the param cut into K segments at block boundaries).
Run8 run8(const at::Tensor& p0, const at::Tensor& grads, const AdamWParams& hp, double gs, const std::string& path,
          at::Device device = at::kCPU) {
  Run8 r{p0.to(device).clone(), {}};
  r.st = ops::make_adamw8bit_state(r.p);
  const int64_t n = r.p.numel();
  for (int64_t t = 1; t <= grads.size(0); ++t) {
    const at::Tensor g = grads[t - 1].to(device).contiguous();
    if (path == "fast") {
      ops::adamw8bit_step(r.p, g, r.st, t, hp, gs);
      continue;
    }
    const auto s = ops::adamw_step_scalars(hp, t, gs);
    const int64_t chunks = path == "reference" ? 1 : std::stoll(path.substr(6));
    const int64_t blocks = (n + 255) / 256;
    const int64_t per = (blocks + chunks - 1) / chunks;
    std::vector<ops::AdamWSegment> segs;
    for (int64_t b0 = 0; b0 < blocks; b0 += per) {
      ops::AdamWSegment seg;
      const int64_t e0 = b0 * 256;
      seg.n = std::min(n, (b0 + per) * 256) - e0;
      seg.p = static_cast<char*>(r.p.data_ptr()) + e0 * r.p.element_size();
      seg.g = static_cast<const char*>(g.data_ptr()) + e0 * g.element_size();
      seg.s1 = r.st.state1.data_ptr<uint8_t>() + e0;
      seg.s2 = r.st.state2.data_ptr<uint8_t>() + e0;
      seg.absmax1 = r.st.absmax1.data_ptr<float>() + b0;
      seg.absmax2 = r.st.absmax2.data_ptr<float>() + b0;
      segs.push_back(seg);
    }
    if (path == "reference") {
      const float* q1 = r.st.qmap1.data_ptr<float>();
      const float* q2 = r.st.qmap2.data_ptr<float>();
      if (r.p.scalar_type() == at::kFloat) ops::adamw_fused_cpu::step8_reference<float>(segs[0], q1, q2, s);
      else ops::adamw_fused_cpu::step8_reference<c10::BFloat16>(segs[0], q1, q2, s);
    } else {
      ops::adamw_fused_step(ops::AdamWFormat::kBlockwise8bit, segs, r.p.scalar_type(), device, s, r.st.qmap1, r.st.qmap2);
    }
  }
  return r;
}

void expect_run_equal(const Run8& a, const Run8& b, const std::string& what) {
  expect_same_bytes(a.p, b.p, what + " param");
  expect_same_bytes(a.st.state1, b.st.state1, what + " state1");
  expect_same_bytes(a.st.state2, b.st.state2, what + " state2");
  expect_same_bytes(a.st.absmax1, b.st.absmax1, what + " absmax1");
  expect_same_bytes(a.st.absmax2, b.st.absmax2, what + " absmax2");
}

const std::vector<int64_t> kSizes = {1, 255, 256, 257, 4099, 70001};

struct Hyper {
  std::string name;
  AdamWParams hp;
  double gs;
};
const std::vector<Hyper> kHyper = {{"qlora", {2e-4, 0.9, 0.999, 1e-8, 0.0}, 1.0},
                                   {"wd_gs", {1e-2, 0.8, 0.99, 1e-6, 0.1}, 0.37}};

TEST(AdamW8bit, DynamicMapsMatchFormatsAnchors) {
  const at::Tensor s = ops::dynamic_map(true);
  const at::Tensor u = ops::dynamic_map(false);
  ASSERT_EQ(s.numel(), 256);
  ASSERT_EQ(u.numel(), 256);
  // formats.md §1.7: signed min -0.99296874, 0 at 127, second largest 0.99296874, top 1.0, smallest positive 5.5e-7.
  EXPECT_FLOAT_EQ(s[0].item<float>(), -0.99296874f);
  EXPECT_EQ(s[127].item<float>(), 0.0f);
  EXPECT_FLOAT_EQ(s[128].item<float>(), 5.5e-7f);
  EXPECT_FLOAT_EQ(s[254].item<float>(), 0.99296874f);
  EXPECT_EQ(s[255].item<float>(), 1.0f);
  // Unsigned: 0, smallest positive 3.25e-7, second largest 0.99648440, top 1.0.
  EXPECT_EQ(u[0].item<float>(), 0.0f);
  EXPECT_FLOAT_EQ(u[1].item<float>(), 3.25e-7f);
  EXPECT_FLOAT_EQ(u[254].item<float>(), 0.99648440f);
  EXPECT_EQ(u[255].item<float>(), 1.0f);
  // The signed map is the one NF4 double quantization uses (same construction, same bits).
  expect_same_bytes(s, ops::signed_dynamic_map(), "signed map vs nf4's");
}

TEST(AdamW8bit, BisectionPicksANearestCode) {
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  for (const bool is_signed : {true, false}) {
    const at::Tensor map = ops::dynamic_map(is_signed);
    const float* q = map.data_ptr<float>();
    std::uniform_real_distribution<float> uni(is_signed ? -1.0f : 0.0f, 1.0f);
    std::uniform_int_distribution<int> code(0, 255);
    for (int i = 0; i < 20000; ++i) {
      // Uniform values, values near a code, exact codes and midpoints between codes.
      float x = uni(rng);
      const int c = code(rng);
      if (i % 4 == 1) x = q[c] * (1.0f + 1e-3f * uni(rng));
      if (i % 4 == 2) x = q[c];
      if (i % 4 == 3 && c < 255) x = (q[c] + q[c + 1]) * 0.5f;
      if (!is_signed) x = std::fabs(x);
      const int got = is_signed ? a8::quantize_code<true>(q, x) : a8::quantize_code<false>(q, x);
      // In double; the midpoint itself is a float32 rounding, so a code within an ulp of x's tie is as good.
      const double err = std::fabs(static_cast<double>(q[got]) - x);
      const double slack = std::ldexp(std::fabs(static_cast<double>(x)), -23);
      for (int k = 0; k < 256; ++k)
        ASSERT_LE(err, std::fabs(static_cast<double>(q[k]) - x) + slack) << (is_signed ? "signed" : "unsigned") << " x=" << x << " got code " << got
                                            << " (" << q[got] << "), code " << k << " (" << q[k] << ") is nearer";
    }
  }
}

TEST(AdamW8bit, FastAndSegmentedEqualReference) {
  const uint64_t base = std::random_device{}();
  SCOPED_TRACE("base seed " + std::to_string(base));
  uint64_t seed = base;
  for (const at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
    for (const int64_t n : kSizes) {
      for (const Hyper& h : kHyper) {
        const std::string what = std::string(c10::toString(dtype)) + " n=" + std::to_string(n) + " " + h.name +
                                 " seed=" + std::to_string(++seed);
        at::Generator gen = at::detail::createCPUGenerator(seed);
        const at::Tensor p0 = at::randn({n}, gen).to(dtype);
        const at::Tensor grads = make_grads(8, n, dtype, seed, /*nonfinite=*/true);
        const Run8 ref = run8(p0, grads, h.hp, h.gs, "reference");
        expect_run_equal(run8(p0, grads, h.hp, h.gs, "fast"), ref, "fast " + what);
        expect_run_equal(run8(p0, grads, h.hp, h.gs, "chunks3"), ref, "3 segments " + what);
        if (::testing::Test::HasFailure()) return;
        if (n > 5 && dtype == at::kFloat) {  // a NaN/Inf gradient leaves its param alone
          at::Tensor p = p0.clone();
          ops::AdamW8bitState st = ops::make_adamw8bit_state(p);
          for (int64_t t = 1; t <= 3; ++t) {
            const at::Tensor before = p.clone();
            ops::adamw8bit_step(p, grads[t - 1], st, t, h.hp, h.gs);
            if (t == 2) EXPECT_EQ(bits(p[3].item<float>()), bits(before[3].item<float>())) << what << " NaN element moved";
            if (t == 3) EXPECT_EQ(bits(p[5].item<float>()), bits(before[5].item<float>())) << what << " Inf element moved";
          }
        }
      }
    }
  }
}

TEST(AdamW8bit, Fused32bitEqualsPerTensorAdamW) {
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  for (const at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
    at::Generator gen = at::detail::createCPUGenerator(seed);
    // Three params in one call, the middle one cut in two segments.
    std::vector<at::Tensor> ps = {at::randn({300}, gen).to(dtype), at::randn({5000}, gen).to(dtype),
                                  at::randn({7}, gen).to(dtype)};
    std::vector<at::Tensor> ref_p, m, v;
    std::vector<ops::AdamWState> ref_st;
    for (const auto& p : ps) {
      ref_p.push_back(p.clone());
      ref_st.push_back(ops::make_adamw_state(p));
      m.push_back(at::zeros({p.numel()}));
      v.push_back(at::zeros({p.numel()}));
    }
    const AdamWParams hp{1e-2, 0.9, 0.999, 1e-8, 0.05};
    for (int64_t t = 1; t <= 5; ++t) {
      std::vector<at::Tensor> gs;
      for (const auto& p : ps) gs.push_back((at::randn({p.numel()}, gen) * 1e-2).to(dtype));
      for (std::size_t i = 0; i < ps.size(); ++i) ops::adamw_step(ref_p[i], gs[i], ref_st[i], t, hp, 0.7);
      std::vector<ops::AdamWSegment> segs;
      for (std::size_t i = 0; i < ps.size(); ++i) {
        const int64_t cut = i == 1 ? 2048 : ps[i].numel();
        for (int64_t b = 0; b < ps[i].numel(); b += cut) {
          ops::AdamWSegment s;
          s.n = std::min(cut, ps[i].numel() - b);
          s.p = static_cast<char*>(ps[i].data_ptr()) + b * ps[i].element_size();
          s.g = static_cast<const char*>(gs[i].data_ptr()) + b * gs[i].element_size();
          s.s1 = m[i].data_ptr<float>() + b;
          s.s2 = v[i].data_ptr<float>() + b;
          segs.push_back(s);
        }
      }
      ops::adamw_fused_step(ops::AdamWFormat::kFloat32, segs, dtype, at::kCPU, ops::adamw_step_scalars(hp, t, 0.7));
    }
    for (std::size_t i = 0; i < ps.size(); ++i) {
      const std::string what = std::string(c10::toString(dtype)) + " param " + std::to_string(i);
      expect_same_bytes(ps[i], ref_p[i], what);
      expect_same_bytes(m[i], ref_st[i].exp_avg.reshape({-1}), what + " m");
      expect_same_bytes(v[i], ref_st[i].exp_avg_sq.reshape({-1}), what + " v");
    }
  }
}

// 8-bit state is an approximation of 32-bit AdamW: over 20 steps the params stay close (relative to how far
// they moved) and the dequantized moments within the map's resolution. Not a tolerance on bnb (the oracle is).
TEST(AdamW8bit, TracksThirtyTwoBitAdamW) {
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  at::Generator gen = at::detail::createCPUGenerator(seed);
  const int64_t n = 20000;
  const at::Tensor p0 = at::randn({n}, gen);
  const at::Tensor grads = make_grads(20, n, at::kFloat, seed, false);
  const AdamWParams hp{1e-2, 0.9, 0.999, 1e-8, 0.0};
  const Run8 r8 = run8(p0, grads, hp, 1.0, "fast");
  at::Tensor p32 = p0.clone();
  ops::AdamWState s32 = ops::make_adamw_state(p32);
  for (int64_t t = 1; t <= 20; ++t) ops::adamw_step(p32, grads[t - 1], s32, t, hp);
  const double moved = (p32 - p0).norm().item<double>();
  const double gap = (r8.p - p32).norm().item<double>();
  EXPECT_LT(gap, 0.1 * moved) << "8-bit vs 32-bit after 20 steps: " << gap << ", movement " << moved;
  // Negative control: a different gradient sequence moves the params far more than that.
  const Run8 other = run8(p0, make_grads(20, n, at::kFloat, seed + 1, false), hp, 1.0, "fast");
  EXPECT_GT((other.p - p32).norm().item<double>(), 3 * gap);
}

TEST(AdamW8bit, RejectsBadArguments) {
  at::Tensor p = at::randn({1000});
  ops::AdamW8bitState st = ops::make_adamw8bit_state(p);
  const AdamWParams hp;
  auto expect_throw = [&](const std::function<void()>& f, const std::string& needle) {
    try {
      f();
      ADD_FAILURE() << "expected an error mentioning '" << needle << "'";
    } catch (const c10::Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_throw([&] { ops::adamw8bit_step(p, at::randn({999}), st, 1, hp); }, "grad");
  expect_throw([&] { ops::adamw8bit_step(p, at::randn({1000}), st, 0, hp); }, "step");
  ops::AdamW8bitState bad = st;
  bad.absmax1 = at::zeros({3});
  expect_throw([&] { ops::adamw8bit_step(p, at::randn({1000}), bad, 1, hp); }, "absmax1");
  bad = st;
  bad.state2 = at::zeros({1000}, at::kFloat);
  expect_throw([&] { ops::adamw8bit_step(p, at::randn({1000}), bad, 1, hp); }, "state2");
  at::Tensor i32 = at::zeros({10}, at::kInt);
  expect_throw([&] { ops::make_adamw8bit_state(i32); }, "float32 or bfloat16");
}

// ---- CUDA ----

TEST(AdamW8bitGpu, KernelsEqualCpu) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const at::Device cuda(at::kCUDA, 0);
  uint64_t seed = 777;
  for (const at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
    for (const int64_t n : kSizes) {
      for (const Hyper& h : kHyper) {
        const std::string what = std::string(c10::toString(dtype)) + " n=" + std::to_string(n) + " " + h.name;
        at::Generator gen = at::detail::createCPUGenerator(++seed);
        const at::Tensor p0 = at::randn({n}, gen).to(dtype);
        const at::Tensor grads = make_grads(8, n, dtype, seed, true);
        const Run8 cpu = run8(p0, grads, h.hp, h.gs, "fast");
        expect_run_equal(run8(p0, grads, h.hp, h.gs, "fast", cuda), cpu, "cuda " + what);
        expect_run_equal(run8(p0, grads, h.hp, h.gs, "chunks4", cuda), cpu, "cuda 4 segments " + what);
      }
    }
  }
}

}  // namespace
