// Explicit, deterministic paging of optimizer state (design.md decision 8; formats.md §2.2 for what
// bitsandbytes does instead: CUDA managed memory, prefetch per tensor, eviction left to the driver).
//
// The state is `num_pages` fixed-size pages. With `slots >= num_pages` every page lives in one buffer on
// the training device and nothing moves: this IS the unpaged optimizer. With fewer slots the pages live in
// a host tier (pinned memory on CUDA) and a device pool of `slots` pages holds the ones in use:
//
//   visit(fn), once per optimizer step:
//     1. the pages already resident, in ascending order, as ONE batch (one kernel launch per format)
//     2. every other page in ascending order, one batch each, through the pool: the slot whose page was
//        processed longest ago is written back to the host and refilled; the next page is prefetched into
//        the following victim slot while fn runs on the current one (needs >= 2 slots; with 1 slot each
//        page is loaded, updated and written back in turn)
//   so a step copies 2·(num_pages - slots) pages and the last `slots` pages stay resident for the next step.
//
// On CUDA the copies run on a side stream, ordered against the updates by events (a slot is refilled only
// after the update that used it, an update starts only after its page arrived). On the CPU the "device"
// tier is a separate arena with the same slots and the same order, copies are synchronous: CI tests the
// eviction and prefetch order and that every budget gives the unpaged bits.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

namespace qtrain {

// One event of the pager, for tests and the log: a page copied in or out, or a batch handed to the update.
struct PagerEvent {
  enum Kind : uint8_t { kIn, kOut, kRun } kind;
  int64_t page;  // kRun: the batch's first page
  int64_t slot;  // kRun: the number of pages in the batch
  bool operator==(const PagerEvent&) const = default;
};

class PagedState {
 public:
  // A page resident in the device tier during a visit: its index and the device address of its bytes.
  struct Resident {
    int64_t page;
    uint8_t* data;
  };

  // Zero-filled. slots >= num_pages: everything resident on `device`, no host tier.
  PagedState(int64_t num_pages, int64_t page_bytes, at::Device device, int64_t slots);
  ~PagedState();
  PagedState(const PagedState&) = delete;
  PagedState& operator=(const PagedState&) = delete;

  int64_t num_pages() const { return num_pages_; }
  int64_t page_bytes() const { return page_bytes_; }
  int64_t slots() const { return slots_; }
  bool paged() const { return slots_ < num_pages_; }
  int64_t device_bytes() const { return slots_ * page_bytes_; }
  int64_t host_bytes() const { return paged() ? num_pages_ * page_bytes_ : 0; }

  // Every page exactly once, in batches (see the top of this file); fn runs on the current stream.
  void visit(const std::function<void(const std::vector<Resident>& batch)>& fn);

  // All pages' bytes on the CPU, [num_pages * page_bytes] uint8 (waits for pending copies), and back.
  at::Tensor read_all() const;
  void write_all(const at::Tensor& bytes);

  // Copies and batches since construction, in order (cleared by clear_trace).
  const std::vector<PagerEvent>& trace() const { return trace_; }
  void clear_trace() { trace_.clear(); }
  int64_t pages_in() const { return pages_in_; }
  int64_t pages_out() const { return pages_out_; }

 private:
  struct CudaSync;  // side stream and per-slot events (CUDA builds only)

  uint8_t* slot_data(int64_t slot) const;
  uint8_t* host_data(int64_t page) const;
  void fill(int64_t slot, int64_t page);     // write back the slot's page (if any), load `page` into it
  void before_use(int64_t slot);             // the current stream waits for the slot's copy
  void after_use(int64_t slot);              // the slot's next copy waits for the current stream
  void sync_copies() const;

  int64_t num_pages_, page_bytes_, slots_;
  at::Device device_;
  at::Tensor pool_;  // [slots * page_bytes] on the device (CPU: the separate arena)
  at::Tensor host_;  // [num_pages * page_bytes] on the host (pinned on CUDA); undefined when not paged
  std::vector<int64_t> slot_page_;   // page held by each slot, -1 = none
  std::vector<int64_t> page_slot_;   // slot holding each page, -1 = host only
  std::vector<int64_t> slot_age_;    // visit order of the slot's last use (FIFO eviction)
  int64_t clock_ = 0;
  std::vector<PagerEvent> trace_;
  int64_t pages_in_ = 0, pages_out_ = 0;
  std::unique_ptr<CudaSync> cuda_;
};

}  // namespace qtrain
