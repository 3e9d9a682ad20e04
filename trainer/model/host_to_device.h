// Batch tensors (ids, positions, segment ids) are built on the host by the loader. A plain .to(cuda)
// from pageable memory makes libtorch synchronise the stream after the copy, so every micro-batch
// would wait for the previous one's backward to drain; copied from pinned memory with non_blocking,
// the copy is queued on the stream like a kernel and the host runs ahead.
#pragma once

#include <ATen/ATen.h>

namespace qtrain {

// `t` on `device`: a no-op when it is there already, an asynchronous copy from the host to a GPU.
inline at::Tensor host_to_device(const at::Tensor& t, const at::Device& device) {
  if (t.device() == device) return t;
  if (device.is_cuda() && t.is_cpu()) return t.pin_memory().to(device, /*non_blocking=*/true);
  return t.to(device);
}

}  // namespace qtrain
