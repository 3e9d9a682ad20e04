// The memory point of QLoRA: after a 4-bit linear's forward, while the graph is alive, no
// full-precision copy of W is held (backward dequantizes again), with an adapter (QLoRA) and without
// one (a frozen linear outside target_modules). Measured with a counting CPU allocator; each negative
// control (plain autograd through a dequantized W) must hold one.
#include <gtest/gtest.h>

#include <ATen/CPUGeneratorImpl.h>

#include <cstdio>

#include "ops/nf4.h"
#include "ops/qlora_linear.h"
#include "tests/ops/counting_allocator.h"

namespace qtrain::ops {
namespace {

using test::AllocatorScope;

constexpr int64_t N = 1024, K = 1024, T = 8, r = 8;
constexpr int64_t kWBytes = N * K * 4;  // the fp32 W that must not be kept: 4 MiB

// Bytes that `forward` leaves alive (its output and what the graph saves), then runs backward so the
// graph is used once. Every tensor allocated under the scope may outlive it safely (counting_allocator.h).
template <class Fn>
int64_t kept_by(const AllocatorScope& scope, Fn forward) {
  const int64_t before = scope.live();
  at::Tensor y = forward();
  const int64_t kept = scope.live() - before;
  y.sum().backward();
  return kept;
}

TEST(QLoraMemory, NoFullPrecisionWeightSurvivesForward) {
  QuantState w = quantize_4bit(at::randn({N, K}), QuantParams{});
  at::Tensor x = at::randn({T, K}).set_requires_grad(true);
  at::Tensor A = (at::randn({r, K}) * 0.01).set_requires_grad(true);
  at::Tensor B = (at::randn({N, r}) * 0.01).set_requires_grad(true);

  AllocatorScope scope;
  const int64_t kept_qlora = kept_by(scope, [&] { return qlora_linear(x, QLoraLinearArgs{&w, {}, A, B, 2.0, {}}); });
  // Negative control: plain autograd through a dequantized weight saves W for grad_x.
  const int64_t kept_dense = kept_by(scope, [&] {
    return at::linear(x, dequantize_4bit(w, at::kFloat)) + at::linear(at::linear(x, A), B) * 2.0;
  });
  std::printf("kept after forward: QLoRA %lld bytes, dense control %lld, fp32 W %lld\n", static_cast<long long>(kept_qlora),
              static_cast<long long>(kept_dense), static_cast<long long>(kWBytes));
  EXPECT_LT(kept_qlora, kWBytes / 4) << "QLoRA forward keeps " << kept_qlora << " bytes alive; W alone is " << kWBytes;
  EXPECT_GE(kept_dense, kWBytes) << "the control should hold a full-precision W (" << kept_dense << " bytes kept)";
  EXPECT_TRUE(A.grad().defined() && B.grad().defined() && x.grad().defined());
}

// A quantized linear without an adapter (x requires grad because an earlier layer is trained).
TEST(QLoraMemory, FrozenLinearKeepsNoFullPrecisionWeight) {
  QuantState w = quantize_4bit(at::randn({N, K}), QuantParams{});
  const at::Tensor bias = at::randn({N});
  at::Tensor x = at::randn({T, K}).set_requires_grad(true);

  AllocatorScope scope;
  const int64_t kept_frozen = kept_by(scope, [&] { return qlora_linear(x, QLoraLinearArgs{&w, bias, {}, {}, 1.0, {}}); });
  const at::Tensor gx_frozen = x.grad().clone();
  x.mutable_grad() = at::Tensor();
  // Negative control: what Linear::forward did before (at::linear through a dequantized W).
  const int64_t kept_dense = kept_by(scope, [&] { return at::linear(x, dequantize_4bit(w, at::kFloat), bias); });
  std::printf("kept after forward: frozen 4-bit %lld bytes, dense control %lld, fp32 W %lld\n",
              static_cast<long long>(kept_frozen), static_cast<long long>(kept_dense), static_cast<long long>(kWBytes));
  EXPECT_LT(kept_frozen, kWBytes / 4) << "the frozen 4-bit linear keeps " << kept_frozen << " bytes alive; W alone is "
                                      << kWBytes;
  EXPECT_GE(kept_dense, kWBytes) << "the control should hold a full-precision W (" << kept_dense << " bytes kept)";
  EXPECT_TRUE(at::allclose(gx_frozen, x.grad(), 1e-5, 1e-5)) << "same grad x as the dense control";
}

// Two scopes in one process both count (c10 silently ignores an allocator of lower priority, which would
// make every "keeps less than" check above pass with 0 bytes).
TEST(QLoraMemory, EveryScopeCounts) {
  for (int i = 0; i < 2; ++i) {
    AllocatorScope scope;
    const int64_t before = scope.live();
    at::Tensor t = at::empty({1 << 16}, at::kFloat);
    EXPECT_GE(scope.live() - before, int64_t{1 << 18}) << "scope " << i << " did not count a 256 KiB tensor";
  }
}

}  // namespace
}  // namespace qtrain::ops
