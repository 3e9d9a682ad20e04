// The memory point of QLoRA: after the QLoRA linear's forward, while the graph is alive, no
// full-precision copy of W is held (backward dequantizes again). Measured with a counting CPU
// allocator; the negative control (plain autograd through a dequantized W) must hold one.
#include <gtest/gtest.h>

#include <c10/core/CPUAllocator.h>

#include <ATen/CPUGeneratorImpl.h>

#include <atomic>

#include "ops/nf4.h"
#include "ops/qlora_linear.h"

namespace qtrain::ops {
namespace {

// Counts live bytes of every CPU allocation while installed (test-only: the allocator is process-wide).
class CountingAllocator final : public c10::Allocator {
 public:
  explicit CountingAllocator(c10::Allocator* base) : base_(base) {}
  c10::DataPtr allocate(size_t n) override {
    c10::DataPtr inner = base_->allocate(n);
    void* data = inner.get();
    auto* ctx = new Ctx{std::move(inner), n, this};
    live_ += static_cast<int64_t>(n);
    return {data, ctx, &Delete, c10::Device(c10::DeviceType::CPU)};
  }
  void copy_data(void* dest, const void* src, std::size_t count) const override { std::memcpy(dest, src, count); }
  int64_t live() const { return live_.load(); }

 private:
  struct Ctx {
    c10::DataPtr inner;
    size_t n;
    CountingAllocator* self;
  };
  static void Delete(void* p) {
    auto* ctx = static_cast<Ctx*>(p);
    ctx->self->live_ -= static_cast<int64_t>(ctx->n);
    delete ctx;
  }
  c10::Allocator* base_;
  std::atomic<int64_t> live_{0};
};

class AllocatorScope {
 public:
  AllocatorScope() : old_(c10::GetCPUAllocator()), counting_(old_) { c10::SetCPUAllocator(&counting_, /*priority=*/100); }
  ~AllocatorScope() { c10::SetCPUAllocator(old_, /*priority=*/101); }
  int64_t live() const { return counting_.live(); }

 private:
  c10::Allocator* old_;
  CountingAllocator counting_;
};

TEST(QLoraMemory, NoFullPrecisionWeightSurvivesForward) {
  constexpr int64_t N = 1024, K = 1024, T = 8, r = 8;
  const int64_t w_bytes = N * K * 4;  // the fp32 W that must not be kept: 4 MiB
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(1);
  QuantState w = quantize_4bit(at::randn({N, K}), QuantParams{});
  at::Tensor x = at::randn({T, K}).set_requires_grad(true);
  at::Tensor A = (at::randn({r, K}) * 0.01).set_requires_grad(true);
  at::Tensor B = (at::randn({N, r}) * 0.01).set_requires_grad(true);

  int64_t kept_qlora = 0, kept_dense = 0;
  AllocatorScope scope;  // one scope: c10 only accepts a later allocator of higher priority
  {
    const int64_t before = scope.live();
    at::Tensor y = qlora_linear(x, QLoraLinearArgs{&w, {}, A, B, 2.0, {}});
    kept_qlora = scope.live() - before;  // y [T, N] + what the graph saves
    y.sum().backward();
  }
  {
    const int64_t before = scope.live();
    // Negative control: plain autograd through a dequantized weight saves W for grad_x.
    at::Tensor y = at::linear(x, dequantize_4bit(w, at::kFloat)) + at::linear(at::linear(x, A), B) * 2.0;
    kept_dense = scope.live() - before;
    y.sum().backward();
  }
  EXPECT_LT(kept_qlora, w_bytes / 4) << "QLoRA forward keeps " << kept_qlora << " bytes alive; W alone is " << w_bytes;
  EXPECT_GE(kept_dense, w_bytes) << "the control should hold a full-precision W (" << kept_dense << " bytes kept)";
  EXPECT_TRUE(A.grad().defined() && B.grad().defined() && x.grad().defined());
}

}  // namespace
}  // namespace qtrain::ops
