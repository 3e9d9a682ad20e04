// Counts the CUDA synchronisations made on this thread while alive: c10's sync debug mode set to "warn", each
// synchronisation warning caught by a c10 warning handler with its C++ stack (replayed warnings from
// autograd's device threads show where they were replayed). Shared by the GPU tests that bound syncs.
#pragma once
#if defined(QTRAIN_WITH_CUDA)

#include <c10/cuda/CUDAFunctions.h>
#include <c10/util/Backtrace.h>
#include <c10/util/Exception.h>

#include <cstddef>
#include <string>
#include <vector>

namespace qtrain {

class SyncCounter : public c10::WarningHandler {
 public:
  SyncCounter() : previous_(c10::cuda::warning_state().get_sync_debug_mode()), guard_(this) {
    c10::cuda::warning_state().set_sync_debug_mode(c10::cuda::SyncDebugMode::L_WARN);
  }
  ~SyncCounter() override { c10::cuda::warning_state().set_sync_debug_mode(previous_); }
  SyncCounter(const SyncCounter&) = delete;
  SyncCounter& operator=(const SyncCounter&) = delete;

  void process(const c10::Warning& w) override {
    if (w.msg().find("synchronizing CUDA operation") != std::string::npos) {
      where_.push_back(c10::get_backtrace(/*frames_to_skip=*/1, /*maximum_number_of_frames=*/24));
    } else {
      others_.push_back(w.msg());
    }
  }
  std::size_t count() const { return where_.size(); }
  // Every synchronisation's stack and every other warning, for a failure message.
  std::string report() const {
    std::string r;
    for (std::size_t i = 0; i < where_.size(); ++i) r += "--- synchronisation " + std::to_string(i + 1) + ":\n" + where_[i];
    for (const std::string& m : others_) r += "--- other warning: " + m + "\n";
    return r;
  }

 private:
  c10::cuda::SyncDebugMode previous_;
  c10::WarningUtils::WarningHandlerGuard guard_;
  std::vector<std::string> where_;
  std::vector<std::string> others_;
};

}  // namespace qtrain

#endif  // QTRAIN_WITH_CUDA
