// CUDA back end of AdamW: one fused element-wise kernel on raw pointers, its launcher taking a cudaStream_t,
// then the tensor glue. The per-element math is ops/adamw_math.h, shared with the CPU reference, so the kernel
// and the CPU produce the same bits (every operation an explicit _rn intrinsic: no FMA contraction).
#include "ops/cuda_check.h"
#include "ops/cuda_dtype.cuh"
#include "ops/adamw.h"
#include "ops/adamw_math.h"

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

namespace qtrain::ops::adamw_cuda {
namespace am = adamw_math;

namespace {

// ---------------------------------------------------------------------------------------------------
// Kernel (no torch below this line until the glue section).
// ---------------------------------------------------------------------------------------------------

using cuda_dtype::to_float;
template <typename T>
__device__ __forceinline__ T round_to(float v) { return cuda_dtype::from_float<T>(v); }

// Grid-stride over n elements; one thread owns an element for the whole update, so there is no sharing.
// The op is memory bound (p, g: 2*sizeof(T), m, v: 16 bytes read + written per element), so plain coalesced
// scalar accesses are enough; 128-bit vector loads would be the next step if profiling says so.
template <typename T>
__global__ void adamw_32bit_kernel(T* __restrict__ p,          // [n]
                                   const T* __restrict__ g,    // [n]
                                   float* __restrict__ m,      // [n]
                                   float* __restrict__ v,      // [n]
                                   int64_t n, const am::StepScalars s) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    float mi = m[i];
    float vi = v[i];
    T pi = round_to<T>(am::adam_update(to_float(p[i]), to_float(g[i]), mi, vi, s));
    if (s.apply_decay) pi = round_to<T>(am::decay_update(to_float(pi), s));
    p[i] = pi;
    m[i] = mi;
    v[i] = vi;
  }
}

// ---------------------------------------------------------------------------------------------------
// Launcher.
// ---------------------------------------------------------------------------------------------------

template <typename T>
void launch_adamw_32bit(T* p, const T* g, float* m, float* v, int64_t n, const am::StepScalars& s,
                        int max_blocks, cudaStream_t stream) {
  constexpr int kThreads = 256;
  const int64_t needed = (n + kThreads - 1) / kThreads;
  const int blocks = static_cast<int>(std::min<int64_t>(needed, max_blocks));
  adamw_32bit_kernel<T><<<blocks, kThreads, 0, stream>>>(p, g, m, v, n, s);
}

// ---------------------------------------------------------------------------------------------------
// Tensor glue.
// ---------------------------------------------------------------------------------------------------


}  // namespace

void step(at::Tensor& param, const at::Tensor& grad, AdamWState& state, const am::StepScalars& s) {
  TORCH_CHECK(param.is_cuda(), "adamw_cuda::step: tensor param must be on a CUDA device, found ", param.device());
  TORCH_CHECK(grad.device() == param.device() && state.exp_avg.device() == param.device() &&
                  state.exp_avg_sq.device() == param.device(),
              "adamw_cuda::step: grad (", grad.device(), "), exp_avg (", state.exp_avg.device(), ") and exp_avg_sq (",
              state.exp_avg_sq.device(), ") must be on the param's device ", param.device());
  TORCH_CHECK(param.is_contiguous() && state.exp_avg.is_contiguous() && state.exp_avg_sq.is_contiguous(),
              "adamw_cuda::step: param, exp_avg and exp_avg_sq must be contiguous");
  TORCH_CHECK(state.exp_avg.scalar_type() == at::kFloat && state.exp_avg_sq.scalar_type() == at::kFloat,
              "adamw_cuda::step: exp_avg and exp_avg_sq must be float32, found ", state.exp_avg.scalar_type(), " and ",
              state.exp_avg_sq.scalar_type());
  const c10::cuda::CUDAGuard guard(param.device());
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const at::Tensor g = grad.contiguous();
  const int64_t n = param.numel();
  // Enough blocks to fill the device a few times over; the grid-stride loop covers the rest.
  const int max_blocks = at::cuda::getCurrentDeviceProperties()->multiProcessorCount * 8;
  float* m = state.exp_avg.data_ptr<float>();
  float* v = state.exp_avg_sq.data_ptr<float>();
  switch (param.scalar_type()) {
    case at::kFloat:
      launch_adamw_32bit(param.data_ptr<float>(), g.data_ptr<float>(), m, v, n, s, max_blocks, stream);
      break;
    case at::kBFloat16:
      launch_adamw_32bit(reinterpret_cast<__nv_bfloat16*>(param.data_ptr<at::BFloat16>()),
                         reinterpret_cast<const __nv_bfloat16*>(g.data_ptr<at::BFloat16>()), m, v, n, s, max_blocks,
                         stream);
      break;
    default:
      TORCH_CHECK(false, "adamw_cuda::step: tensor param must be float32 or bfloat16, found ", param.scalar_type());
  }
  check_launch("adamw_step");
}

}  // namespace qtrain::ops::adamw_cuda
