#include "trainer/paged_state.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>

#if defined(QTRAIN_WITH_CUDA)
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#endif

namespace qtrain {

#if defined(QTRAIN_WITH_CUDA)
struct PagedState::CudaSync {
  c10::cuda::CUDAStream copy;             // the side stream every page copy runs on
  std::vector<at::cuda::CUDAEvent> ready;  // per slot: its last fill is done (the update may start)
  std::vector<at::cuda::CUDAEvent> done;   // per slot: its last update is done (it may be refilled)
  CudaSync(at::Device d, int64_t slots)
      : copy(c10::cuda::getStreamFromPool(/*isHighPriority=*/false, d.index())), ready(slots), done(slots) {}
};
#else
struct PagedState::CudaSync {};
#endif

PagedState::PagedState(int64_t num_pages, int64_t page_bytes, at::Device device, int64_t slots)
    : num_pages_(num_pages), page_bytes_(page_bytes), slots_(std::min(slots, num_pages)), device_(device) {
  if (num_pages < 1 || page_bytes < 1 || slots < 1)
    throw std::invalid_argument("PagedState: needs >= 1 page of >= 1 byte and >= 1 slot, found " +
                                std::to_string(num_pages) + " pages of " + std::to_string(page_bytes) + " bytes, " +
                                std::to_string(slots) + " slots");
  pool_ = at::zeros({slots_ * page_bytes_}, at::TensorOptions().dtype(at::kByte).device(device_));
  slot_page_.assign(slots_, -1);
  page_slot_.assign(num_pages_, -1);
  slot_age_.assign(slots_, -1);
  if (!paged()) {  // the unpaged optimizer: page k in slot k, for good
    for (int64_t k = 0; k < num_pages_; ++k) slot_page_[k] = page_slot_[k] = k;
    return;
  }
  auto host = at::TensorOptions().dtype(at::kByte);
  if (device_.is_cuda()) host = host.pinned_memory(true);  // async copies need page-locked memory
  host_ = at::zeros({num_pages_ * page_bytes_}, host);
  if (device_.is_cuda()) {
#if defined(QTRAIN_WITH_CUDA)
    cuda_ = std::make_unique<CudaSync>(device_, slots_);
#else
    throw std::invalid_argument("PagedState: a CUDA device in a build without CUDA");
#endif
  }
}

PagedState::~PagedState() {
  try {
    sync_copies();  // no copy may outlive the buffers it reads or writes
  } catch (...) {
  }
}

uint8_t* PagedState::slot_data(int64_t slot) const { return pool_.data_ptr<uint8_t>() + slot * page_bytes_; }
uint8_t* PagedState::host_data(int64_t page) const { return host_.data_ptr<uint8_t>() + page * page_bytes_; }

void PagedState::fill(int64_t slot, int64_t page) {
  const int64_t old = slot_page_[slot];
#if defined(QTRAIN_WITH_CUDA)
  if (cuda_) {
    const c10::cuda::CUDAGuard guard(device_);
    cuda_->done[slot].block(cuda_->copy);  // the update that used this slot has finished
    if (old >= 0)
      C10_CUDA_CHECK(cudaMemcpyAsync(host_data(old), slot_data(slot), page_bytes_, cudaMemcpyDeviceToHost, cuda_->copy));
    C10_CUDA_CHECK(cudaMemcpyAsync(slot_data(slot), host_data(page), page_bytes_, cudaMemcpyHostToDevice, cuda_->copy));
    cuda_->ready[slot].record(cuda_->copy);
  }
#endif
  if (!cuda_) {
    if (old >= 0) std::memcpy(host_data(old), slot_data(slot), page_bytes_);
    std::memcpy(slot_data(slot), host_data(page), page_bytes_);
  }
  if (old >= 0) {
    page_slot_[old] = -1;
    trace_.push_back({PagerEvent::kOut, old, slot});
    ++pages_out_;
  }
  slot_page_[slot] = page;
  page_slot_[page] = slot;
  trace_.push_back({PagerEvent::kIn, page, slot});
  ++pages_in_;
}

void PagedState::before_use(int64_t slot) {
#if defined(QTRAIN_WITH_CUDA)
  if (cuda_) cuda_->ready[slot].block(at::cuda::getCurrentCUDAStream(device_.index()));
#else
  (void)slot;
#endif
}

void PagedState::after_use(int64_t slot) {
  slot_age_[slot] = clock_++;
#if defined(QTRAIN_WITH_CUDA)
  if (cuda_) cuda_->done[slot].record(at::cuda::getCurrentCUDAStream(device_.index()));
#endif
}

void PagedState::sync_copies() const {
#if defined(QTRAIN_WITH_CUDA)
  if (cuda_) cuda_->copy.synchronize();
#endif
}

void PagedState::visit(const std::function<void(const std::vector<Resident>& batch)>& fn) {
  if (!paged()) {
    std::vector<Resident> all;
    for (int64_t k = 0; k < num_pages_; ++k) all.push_back({k, slot_data(k)});
    fn(all);
    trace_.push_back({PagerEvent::kRun, 0, num_pages_});
    return;
  }
  // 1. What is resident from the previous step, as one batch.
  std::vector<Resident> resident;
  std::vector<int64_t> rest;
  for (int64_t k = 0; k < num_pages_; ++k) {
    if (page_slot_[k] >= 0) resident.push_back({k, slot_data(page_slot_[k])});
    else rest.push_back(k);
  }
  if (!resident.empty()) {
    for (const Resident& r : resident) before_use(page_slot_[r.page]);
    fn(resident);
    for (const Resident& r : resident) after_use(page_slot_[r.page]);
    trace_.push_back({PagerEvent::kRun, resident.front().page, static_cast<int64_t>(resident.size())});
  }
  // 2. The others through the pool, one page ahead. A victim is the slot used longest ago that holds no page
  // of `rest` still waiting for its update (the current one included).
  std::vector<bool> waiting(num_pages_, false);
  auto victim = [&]() {
    int64_t best = -1;
    for (int64_t s = 0; s < slots_; ++s) {
      const int64_t pg = slot_page_[s];
      if (pg >= 0 && waiting[pg]) continue;
      if (best < 0 || slot_age_[s] < slot_age_[best]) best = s;
    }
    return best;
  };
  for (std::size_t i = 0; i < rest.size(); ++i) {
    const int64_t q = rest[i];
    if (page_slot_[q] < 0) {
      fill(victim(), q);
      waiting[q] = true;
    }
    if (i + 1 < rest.size() && slots_ >= 2) {  // prefetch the next page while this one is updated
      const int64_t next = rest[i + 1];
      const int64_t s = victim();
      if (s >= 0) {
        fill(s, next);
        waiting[next] = true;
      }
    }
    const int64_t slot = page_slot_[q];
    before_use(slot);
    fn({{q, slot_data(slot)}});
    after_use(slot);
    waiting[q] = false;
    trace_.push_back({PagerEvent::kRun, q, 1});
  }
}

at::Tensor PagedState::read_all() const {
  sync_copies();
  at::Tensor out = paged() ? host_.to(at::kCPU, /*non_blocking=*/false, /*copy=*/true)
                           : at::empty({num_pages_ * page_bytes_}, at::kByte);
  for (int64_t s = 0; s < slots_; ++s) {
    if (slot_page_[s] < 0) continue;
    out.narrow(0, slot_page_[s] * page_bytes_, page_bytes_).copy_(pool_.narrow(0, s * page_bytes_, page_bytes_));
  }
  return out;
}

void PagedState::write_all(const at::Tensor& bytes) {
  if (bytes.scalar_type() != at::kByte || bytes.numel() != num_pages_ * page_bytes_)
    throw std::invalid_argument("PagedState::write_all: expected " + std::to_string(num_pages_ * page_bytes_) +
                                " bytes, found " + std::to_string(bytes.numel()));
  sync_copies();
  const at::Tensor src = bytes.contiguous().cpu();
  if (paged()) host_.copy_(src);
  for (int64_t s = 0; s < slots_; ++s) {
    if (slot_page_[s] < 0) continue;
    pool_.narrow(0, s * page_bytes_, page_bytes_).copy_(src.narrow(0, slot_page_[s] * page_bytes_, page_bytes_));
#if defined(QTRAIN_WITH_CUDA)
    if (cuda_) cuda_->done[s].record(at::cuda::getCurrentCUDAStream(device_.index()));  // before any write-back
#endif
  }
}

}  // namespace qtrain
