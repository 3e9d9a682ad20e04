// QLoRA linear: outputs and gradients against a dense fp64 autograd reference built from the dequantized
// weight, central finite differences, frozen W and bias, PEFT init, dropout replay, the frozen linear
// (no adapter), negative controls.
#include "ops/qlora_linear.h"

#include <gtest/gtest.h>
#include <torch/csrc/autograd/autograd.h>

#include <random>
#include <string>
#include <vector>

namespace {

using qtrain::ops::LoraConfig;
using qtrain::ops::LoraScaling;
using qtrain::ops::QLoraLinearArgs;
using qtrain::ops::QuantParams;
using qtrain::ops::QuantState;
using qtrain::ops::QuantType;

struct Case {
  std::vector<int64_t> x_shape;  // [..., K]
  int64_t N;
  int64_t r;
  bool bias;
  double dropout;
};

struct Grads {
  at::Tensor y, gx, gA, gB;
};

// Dense fp64 reference: y = x·Wᵀ + b + s·((x∘m)·Aᵀ)·Bᵀ with W = deq(NF4) widened exactly to fp64.
Grads reference(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias, const at::Tensor& A,
                const at::Tensor& B, double s, const at::Tensor& mask, const at::Tensor& gy) {
  at::Tensor x64 = x.to(at::kDouble).detach().requires_grad_(true);
  at::Tensor A64 = A.to(at::kDouble).detach().requires_grad_(true);
  at::Tensor B64 = B.to(at::kDouble).detach().requires_grad_(true);
  const at::Tensor xd = mask.defined() ? x64 * mask.to(at::kDouble) : x64;
  at::Tensor y = at::matmul(x64, w.to(at::kDouble).t()) + s * at::matmul(at::matmul(xd, A64.t()), B64.t());
  if (bias.defined()) y = y + bias.to(at::kDouble);
  const auto g = torch::autograd::grad({y}, {x64, A64, B64}, {gy.to(at::kDouble)});
  return {y.detach(), g[0], g[1], g[2]};
}

Grads ours(const at::Tensor& x_in, const QLoraLinearArgs& args, const at::Tensor& gy) {
  at::Tensor x = x_in.detach().requires_grad_(true);
  QLoraLinearArgs a = args;
  a.A = args.A.detach().requires_grad_(true);
  a.B = args.B.detach().requires_grad_(true);
  const at::Tensor y = qtrain::ops::qlora_linear(x, a);
  const auto g = torch::autograd::grad({y}, {x, a.A, a.B}, {gy});
  return {y.detach(), g[0], g[1], g[2]};
}

// fp32 matmuls over K <= 300 terms: relative error of a dot product <= K·2^-24 ≈ 2e-5 of sum|a_i b_i|; the
// scale of these tensors is O(10), so atol 1e-3 / rtol 1e-4 leaves a margin while a wrong term (O(0.1) or
// more, see the negative control) fails.
void expect_close(const at::Tensor& a, const at::Tensor& b, const std::string& what) {
  ASSERT_EQ(a.sizes(), b.sizes()) << what;
  const at::Tensor diff = (a.to(at::kDouble) - b.to(at::kDouble)).abs();
  const at::Tensor limit = 1e-3 + 1e-4 * b.to(at::kDouble).abs();
  EXPECT_TRUE((diff <= limit).all().item<bool>())
      << what << ": max |diff| " << diff.max().item<double>() << ", max allowed " << limit.max().item<double>();
}

TEST(QLoraLinear, GradsMatchDenseFp64Reference) {
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  at::Generator gen = at::detail::createCPUGenerator(seed);
  const std::vector<Case> cases = {{{5, 64}, 32, 4, true, 0.0},   {{2, 3, 96}, 40, 8, false, 0.1},
                                   {{1, 130}, 7, 1, true, 0.5},   {{17, 33}, 65, 16, false, 0.0},
                                   {{4, 2, 300}, 19, 3, true, 0.2}};
  for (const Case& c : cases) {
    const int64_t K = c.x_shape.back();
    const at::Tensor wf = at::randn({c.N, K}, gen);
    const QuantState w = qtrain::ops::quantize_4bit(wf, QuantParams{QuantType::kNF4, 64, true});
    LoraConfig cfg{c.r, 2.0 * c.r + 1, c.r % 2 ? LoraScaling::kRsLora : LoraScaling::kStandard, c.dropout};
    qtrain::ops::LoraWeights lw = qtrain::ops::init_lora(K, c.N, cfg, gen);
    lw.B = at::randn({c.N, c.r}, gen);  // PEFT starts B at 0; a nonzero B exercises every gradient term
    QLoraLinearArgs args;
    args.weight = &w;
    args.bias = c.bias ? at::randn({c.N}, gen) : at::Tensor();
    args.A = lw.A;
    args.B = lw.B;
    args.scale = qtrain::ops::lora_scale(cfg);
    args.dropout_mask = qtrain::ops::lora_dropout_mask(c.x_shape, c.dropout, gen, at::kFloat);
    const at::Tensor x = at::randn(c.x_shape, gen);
    std::vector<int64_t> y_shape = c.x_shape;
    y_shape.back() = c.N;
    const at::Tensor gy = at::randn(y_shape, gen);
    const Grads got = ours(x, args, gy);
    const Grads want = reference(x, qtrain::ops::dequantize_4bit(w, at::kFloat), args.bias, args.A, args.B,
                                 args.scale, args.dropout_mask, gy);
    const std::string where = "K=" + std::to_string(K) + " N=" + std::to_string(c.N) + " r=" + std::to_string(c.r);
    expect_close(got.y, want.y, "y " + where);
    expect_close(got.gx, want.gx, "grad x " + where);
    expect_close(got.gA, want.gA, "grad A " + where);
    expect_close(got.gB, want.gB, "grad B " + where);
  }
}

TEST(QLoraLinear, FiniteDifferencesInFp64) {
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  at::Generator gen = at::detail::createCPUGenerator(seed);
  const int64_t K = 70, N = 9, r = 3;
  const QuantState w = qtrain::ops::quantize_4bit(at::randn({N, K}, gen), QuantParams{QuantType::kFP4, 32, true});
  QLoraLinearArgs args;
  args.weight = &w;
  args.A = at::randn({r, K}, gen, at::kDouble);
  args.B = at::randn({N, r}, gen, at::kDouble);
  args.scale = 0.7;
  args.dropout_mask = qtrain::ops::lora_dropout_mask({4, K}, 0.3, gen, at::kDouble);
  const at::Tensor x = at::randn({4, K}, gen, at::kDouble);
  const at::Tensor gy = at::randn({4, N}, gen, at::kDouble);
  const Grads g = ours(x, args, gy);
  // L = <gy, y>; y is linear in each of x, A, B separately, so central differences are exact up to rounding:
  // eps 1e-3 and fp64 give |error| ~ 1e-13 · |L| / eps, far below the 1e-7 tolerance.
  const auto loss = [&](const at::Tensor& xx, const at::Tensor& A, const at::Tensor& B) {
    QLoraLinearArgs a = args;
    a.A = A;
    a.B = B;
    return (qtrain::ops::qlora_linear(xx, a) * gy).sum().item<double>();
  };
  const double eps = 1e-3;
  std::mt19937 rng(7);
  for (int trial = 0; trial < 12; ++trial) {
    for (int which = 0; which < 3; ++which) {
      at::Tensor t = (which == 0 ? x : which == 1 ? args.A : args.B).clone();
      const int64_t idx = static_cast<int64_t>(rng() % t.numel());
      const at::Tensor flat = t.view({-1});
      const double v = flat[idx].item<double>();
      flat[idx] = v + eps;
      const double lp = which == 0 ? loss(t, args.A, args.B) : which == 1 ? loss(x, t, args.B) : loss(x, args.A, t);
      flat[idx] = v - eps;
      const double lm = which == 0 ? loss(t, args.A, args.B) : which == 1 ? loss(x, t, args.B) : loss(x, args.A, t);
      const double fd = (lp - lm) / (2 * eps);
      const at::Tensor& an = which == 0 ? g.gx : which == 1 ? g.gA : g.gB;
      EXPECT_NEAR(an.reshape({-1})[idx].item<double>(), fd, 1e-7) << "input " << which << " index " << idx;
    }
  }
}

TEST(QLoraLinear, WeightAndBiasGetNoGradient) {
  const QuantState w = qtrain::ops::quantize_4bit(at::randn({8, 64}), {});
  QLoraLinearArgs args;
  args.weight = &w;
  args.A = at::randn({2, 64}).requires_grad_(true);
  args.B = at::randn({8, 2}).requires_grad_(true);
  args.bias = at::randn({8});
  const at::Tensor x = at::randn({3, 64}).requires_grad_(true);
  const at::Tensor y = qtrain::ops::qlora_linear(x, args);
  y.sum().backward();
  EXPECT_TRUE(x.grad().defined() && args.A.grad().defined() && args.B.grad().defined());
  EXPECT_FALSE(w.packed.requires_grad() || w.absmax.requires_grad() || w.nested_absmax.requires_grad());
  EXPECT_FALSE(w.packed.grad().defined());
  args.bias.requires_grad_(true);
  EXPECT_THROW(qtrain::ops::qlora_linear(x, args), c10::Error) << "a trainable bias must be rejected";
}

TEST(QLoraLinear, PeftInitAndScaling) {
  at::Generator g1 = at::detail::createCPUGenerator(42);
  at::Generator g2 = at::detail::createCPUGenerator(42);
  const LoraConfig cfg{16, 32.0, LoraScaling::kStandard, 0.05};
  const auto a = qtrain::ops::init_lora(4096, 1024, cfg, g1);
  const auto b = qtrain::ops::init_lora(4096, 1024, cfg, g2);
  EXPECT_TRUE(at::equal(a.A, b.A)) << "the same generator state must give the same A";
  EXPECT_EQ(a.A.sizes(), (std::vector<int64_t>{16, 4096}));
  EXPECT_EQ(a.B.sizes(), (std::vector<int64_t>{1024, 16}));
  EXPECT_TRUE(at::all(a.B == 0).item<bool>());
  const double bound = 1.0 / std::sqrt(4096.0);
  EXPECT_LE(a.A.abs().max().item<double>(), bound * (1 + 1e-12));
  EXPECT_GT(a.A.abs().max().item<double>(), 0.99 * bound) << "65536 draws fill U(-b, b)";
  EXPECT_DOUBLE_EQ(qtrain::ops::lora_scale(cfg), 2.0);
  EXPECT_DOUBLE_EQ(qtrain::ops::lora_scale({16, 32.0, LoraScaling::kRsLora, 0.0}), 8.0);
}

TEST(QLoraLinear, DropoutMaskReplaysAndOnlyTouchesLoraBranch) {
  const QuantState w = qtrain::ops::quantize_4bit(at::randn({6, 32}), {});
  at::Generator g1 = at::detail::createCPUGenerator(3);
  at::Generator g2 = at::detail::createCPUGenerator(3);
  const at::Tensor m1 = qtrain::ops::lora_dropout_mask({5, 32}, 0.5, g1, at::kFloat);
  const at::Tensor m2 = qtrain::ops::lora_dropout_mask({5, 32}, 0.5, g2, at::kFloat);
  EXPECT_TRUE(at::equal(m1, m2));
  QLoraLinearArgs args;
  args.weight = &w;
  args.A = at::randn({2, 32});
  args.B = at::zeros({6, 2});  // B = 0: the LoRA branch contributes nothing, so dropout must not change y
  const at::Tensor x = at::randn({5, 32});
  const at::Tensor y0 = qtrain::ops::qlora_linear(x, args);
  args.dropout_mask = m1;
  EXPECT_TRUE(at::equal(y0, qtrain::ops::qlora_linear(x, args)));
}

TEST(QLoraLinear, NegativeControlWrongMaskOrScaleIsDetected) {
  at::Generator gen = at::detail::createCPUGenerator(11);
  const QuantState w = qtrain::ops::quantize_4bit(at::randn({12, 64}, gen), {});
  QLoraLinearArgs args;
  args.weight = &w;
  args.A = at::randn({4, 64}, gen);
  args.B = at::randn({12, 4}, gen);
  args.scale = 2.0;
  args.dropout_mask = qtrain::ops::lora_dropout_mask({3, 64}, 0.5, gen, at::kFloat);
  const at::Tensor x = at::randn({3, 64}, gen);
  const at::Tensor gy = at::randn({3, 12}, gen);
  const Grads got = ours(x, args, gy);
  const at::Tensor wd = qtrain::ops::dequantize_4bit(w, at::kFloat);
  const Grads no_mask = reference(x, wd, at::Tensor(), args.A, args.B, args.scale, at::Tensor(), gy);
  const Grads wrong_scale = reference(x, wd, at::Tensor(), args.A, args.B, 1.0, args.dropout_mask, gy);
  const auto far = [](const at::Tensor& a, const at::Tensor& b) {
    return ((a.to(at::kDouble) - b).abs() > 1e-3 + 1e-4 * b.abs()).any().item<bool>();
  };
  EXPECT_TRUE(far(got.gA, no_mask.gA)) << "ignoring the mask must be caught by the grad comparison";
  EXPECT_TRUE(far(got.gB, wrong_scale.gB)) << "a wrong scale must be caught by the grad comparison";
}

// Without an adapter the op is the frozen 4-bit linear: y and grad x equal dense fp64 autograd through the
// dequantized W, on odd shapes with and without bias; half an adapter is refused.
TEST(QLoraLinear, FrozenLinearMatchesDenseFp64Reference) {
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  at::Generator gen = at::detail::createCPUGenerator(seed);
  const std::vector<Case> cases = {{{5, 64}, 32, 0, true, 0.0}, {{2, 3, 96}, 40, 0, false, 0.0},
                                   {{1, 130}, 7, 0, true, 0.0}, {{4, 2, 300}, 19, 0, false, 0.0}};
  for (const Case& c : cases) {
    const int64_t K = c.x_shape.back();
    const QuantState w = qtrain::ops::quantize_4bit(at::randn({c.N, K}, gen), QuantParams{QuantType::kNF4, 64, true});
    QLoraLinearArgs args;
    args.weight = &w;
    args.bias = c.bias ? at::randn({c.N}, gen) : at::Tensor();
    at::Tensor x = at::randn(c.x_shape, gen).requires_grad_(true);
    std::vector<int64_t> y_shape = c.x_shape;
    y_shape.back() = c.N;
    const at::Tensor gy = at::randn(y_shape, gen);
    const at::Tensor y = qtrain::ops::qlora_linear(x, args);
    const at::Tensor gx = torch::autograd::grad({y}, {x}, {gy})[0];
    at::Tensor x64 = x.detach().to(at::kDouble).requires_grad_(true);
    at::Tensor y64 = at::matmul(x64, qtrain::ops::dequantize_4bit(w, at::kFloat).to(at::kDouble).t());
    if (c.bias) y64 = y64 + args.bias.to(at::kDouble);
    const at::Tensor gx64 = torch::autograd::grad({y64}, {x64}, {gy.to(at::kDouble)})[0];
    const std::string where = "frozen K=" + std::to_string(K) + " N=" + std::to_string(c.N);
    expect_close(y.detach(), y64.detach(), "y " + where);
    expect_close(gx, gx64, "grad x " + where);
    // Negative control: the comparison must see a wrong weight (another draw quantized the same way).
    const QuantState other = qtrain::ops::quantize_4bit(at::randn({c.N, K}, gen), QuantParams{QuantType::kNF4, 64, true});
    QLoraLinearArgs wrong = args;
    wrong.weight = &other;
    const at::Tensor yw = qtrain::ops::qlora_linear(x.detach(), wrong);
    EXPECT_TRUE(((yw.to(at::kDouble) - y64.detach()).abs() > 1e-3 + 1e-4 * y64.detach().abs()).any().item<bool>())
        << "a different W must be caught by the output comparison";
  }
  QLoraLinearArgs half;
  const QuantState w = qtrain::ops::quantize_4bit(at::randn({8, 64}), {});
  half.weight = &w;
  half.A = at::randn({2, 64});
  EXPECT_THROW(qtrain::ops::qlora_linear(at::randn({3, 64}), half), c10::Error) << "A without B must be refused";
}

TEST(QLoraLinear, RejectsMismatchedShapes) {
  const QuantState w = qtrain::ops::quantize_4bit(at::randn({8, 64}), {});
  QLoraLinearArgs args;
  args.weight = &w;
  args.A = at::randn({2, 64});
  args.B = at::randn({8, 3});
  try {
    qtrain::ops::qlora_linear(at::randn({3, 64}), args);
    ADD_FAILURE() << "expected a shape error";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("B must be [N, r] = [8, 2], found [8, 3]"), std::string::npos) << e.what();
  }
}

}  // namespace
