// The c10d process group that carries data parallelism's collectives: ProcessGroupNCCL on CUDA,
// ProcessGroupGloo on the CPU (so CI runs the multi-process path). The one translation unit that
// includes the backends' headers (Gloo's come from Debian's libgloo-dev, NCCL's with the CUDA toolkit).
#pragma once

#include <chrono>

#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>

namespace qtrain {

// Connects `world` ranks through `store` (every rank calls it). nccl: the build must have CUDA, else
// UsageError. Collectives give up after `timeout`.
c10::intrusive_ptr<c10d::Backend> make_process_group(const c10::intrusive_ptr<c10d::Store>& store, int rank, int world, bool nccl,
                                                     std::chrono::milliseconds timeout);

}  // namespace qtrain
