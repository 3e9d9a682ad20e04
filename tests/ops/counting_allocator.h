// Live and peak bytes of CPU allocations, for tests that check what a forward pass keeps alive (the QLoRA
// memory point) and what a training step peaks at (the memory planner). Test-only: the CPU allocator is
// process-wide.
//
// Lifetime: the counting allocator is one object that is never destroyed, because tensors allocated
// through it may outlive any scope (a .grad, a buffer cached by autograd), and both their deleters and
// their StorageImpl (which keeps the allocator pointer for resizes) may use it later. A scope only
// installs it and puts the previous allocator back.
#pragma once

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/util/Exception.h>

#include <atomic>
#include <cstdint>
#include <cstring>

namespace qtrain::test {

class CountingAllocator final : public c10::Allocator {
 public:
  // The process-wide instance, wrapping the CPU allocator that was current at first use.
  static CountingAllocator& instance() {
    static CountingAllocator* a = new CountingAllocator(c10::GetCPUAllocator());  // never deleted, see above
    return *a;
  }
  c10::DataPtr allocate(size_t n) override {
    c10::DataPtr inner = base_->allocate(n);
    void* data = inner.get();
    auto* ctx = new Ctx{std::move(inner), n};
    const int64_t now = live_ += static_cast<int64_t>(n);
    int64_t p = peak_.load();
    while (now > p && !peak_.compare_exchange_weak(p, now)) {
    }
    return {data, ctx, &Delete, c10::Device(c10::DeviceType::CPU)};
  }
  void copy_data(void* dest, const void* src, std::size_t count) const override { std::memcpy(dest, src, count); }
  int64_t live() const { return live_.load(); }
  int64_t peak() const { return peak_.load(); }  // the most live bytes since reset_peak()
  void reset_peak() { peak_ = live_.load(); }
  c10::Allocator* base() const { return base_; }

 private:
  explicit CountingAllocator(c10::Allocator* base) : base_(base) {}
  struct Ctx {
    c10::DataPtr inner;
    size_t n;
  };
  static void Delete(void* p) {
    auto* ctx = static_cast<Ctx*>(p);
    instance().live_ -= static_cast<int64_t>(ctx->n);
    delete ctx;
  }
  c10::Allocator* base_;
  std::atomic<int64_t> live_{0}, peak_{0};
};

// Installs the counting allocator for its lifetime. c10 takes a new allocator only at a priority >= the
// current one, so install and restore both use the highest priority: a second scope in the same
// process must not be silently ignored (it would then count nothing and a "keeps nothing" check would
// pass vacuously); the constructor checks that the install took effect.
class AllocatorScope {
 public:
  AllocatorScope() : old_(c10::GetCPUAllocator()) {
    c10::SetCPUAllocator(&CountingAllocator::instance(), kPriority);
    TORCH_CHECK(c10::GetCPUAllocator() == &CountingAllocator::instance(),
                "AllocatorScope: the counting CPU allocator was not installed (c10 refused priority ", int(kPriority), ")");
  }
  ~AllocatorScope() { c10::SetCPUAllocator(old_, kPriority); }
  AllocatorScope(const AllocatorScope&) = delete;
  AllocatorScope& operator=(const AllocatorScope&) = delete;
  int64_t live() const { return CountingAllocator::instance().live(); }

 private:
  static constexpr uint8_t kPriority = 255;
  c10::Allocator* old_;
};

}  // namespace qtrain::test
