// The one check after every kernel launch in ops/*.cu: a failed launch becomes an error naming the op.
#pragma once
#include <c10/util/Exception.h>
#include <cuda_runtime.h>

namespace qtrain::ops {

inline void check_launch(const char* what) {
  const cudaError_t err = cudaGetLastError();
  TORCH_CHECK(err == cudaSuccess, what, ": CUDA kernel launch failed: ", cudaGetErrorString(err));
}

}  // namespace qtrain::ops
