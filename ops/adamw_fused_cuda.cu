// CUDA back end of the fused AdamW step (ops/adamw_fused.h): one launch per call over a table of segments,
// one thread block per 256-element state block, one thread per element. The per-element math is
// ops/adamw_math.h / ops/adamw8bit_math.h, shared with the CPU, with every operation an explicit _rn intrinsic
// (no FMA contraction), so the kernel reproduces the CPU reference bit for bit. Unverified on hardware so far
// (no GPU on the development machine): tests/ops/adamw_fused_test.cpp compares it with the CPU where one exists.
#include "ops/adamw8bit_math.h"
#include "ops/adamw_fused.h"
#include "ops/cuda_check.h"
#include "ops/cuda_dtype.cuh"

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cfloat>
#include <cstdint>
#include <cstring>

namespace qtrain::ops::adamw_fused_cuda {
namespace am = adamw_math;
namespace a8 = adamw8bit_math;

namespace {

// ---------------------------------------------------------------------------------------------------
// Kernels (no torch below this line until the glue section).
// ---------------------------------------------------------------------------------------------------

using cuda_dtype::to_float;
template <typename T>
__device__ __forceinline__ T round_to(float v) { return cuda_dtype::from_float<T>(v); }

constexpr int kThreads = a8::kBlock;  // one thread per element of a 256-element state block

// The segment holding this thread block: segs sorted by block_begin (binary search, ≤ log2(#segments) steps).
__device__ __forceinline__ const AdamWSegment& find_segment(const AdamWSegment* __restrict__ segs, int num_segs,
                                                            int64_t gb) {
  int lo = 0;
  int hi = num_segs - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (segs[mid].block_begin <= gb) lo = mid; else hi = mid - 1;
  }
  return segs[lo];
}

template <typename T>
__global__ void adamw_fused_8bit_kernel(const AdamWSegment* __restrict__ segs, int num_segs,
                                        const float* __restrict__ qmap1, const float* __restrict__ qmap2,
                                        const am::StepScalars s) {
  __shared__ float q1[256];
  __shared__ float q2[256];
  __shared__ float red1[kThreads];
  __shared__ float red2[kThreads];
  const int t = threadIdx.x;
  q1[t] = qmap1[t];
  q2[t] = qmap2[t];
  const int64_t gb = blockIdx.x;
  const AdamWSegment& seg = find_segment(segs, num_segs, gb);
  const int64_t b = gb - seg.block_begin;
  const int64_t i = b * a8::kBlock + t;
  const bool valid = i < seg.n;
  __syncthreads();

  const float a1 = seg.absmax1[b];
  const float a2 = seg.absmax2[b];
  // bnb's block load pads a tail block with g = 0, code1 128, code2 0 (adamw8bit_math.h).
  const float g = valid ? to_float(static_cast<const T*>(seg.g)[i]) : 0.0f;
  const uint8_t c1 = valid ? static_cast<const uint8_t*>(seg.s1)[i] : a8::kPadCode1;
  const uint8_t c2 = valid ? static_cast<const uint8_t*>(seg.s2)[i] : uint8_t{0};
  const bool ok = a8::finite(g);
  float m = 0.0f;
  float v = 0.0f;
  if (ok) {
    v = a8::mul_rn(q2[c2], a2);
    m = a8::mul_rn(q1[c1], a1);
    a8::update_state(g, m, v, s);
  }
  // max is order-independent (fmaxf drops NaN either way), so this tree gives the CPU loop's bits.
  red1[t] = fabsf(m);
  red2[t] = fabsf(v);
  __syncthreads();
  for (int w = kThreads / 2; w > 0; w >>= 1) {
    if (t < w) {
      red1[t] = fmaxf(red1[t], red1[t + w]);
      red2[t] = fmaxf(red2[t], red2[t + w]);
    }
    __syncthreads();
  }
  const float max1 = fmaxf(-FLT_MAX, red1[0]);
  const float max2 = fmaxf(-FLT_MAX, red2[0]);
  __syncthreads();  // every thread has read a1/a2 and red*[0] before thread 0 overwrites absmax
  if (t == 0) {
    seg.absmax1[b] = max1;
    seg.absmax2[b] = max2;
  }
  if (!valid) return;
  if (ok) {
    T* p = static_cast<T*>(seg.p);
    T pi = round_to<T>(a8::param_update(to_float(p[i]), m, v, s));
    if (s.apply_decay) pi = round_to<T>(am::decay_update(to_float(pi), s));
    p[i] = pi;
  }
  static_cast<uint8_t*>(seg.s1)[i] = a8::requantize_m(q1, m, max1);
  static_cast<uint8_t*>(seg.s2)[i] = a8::requantize_v(q2, v, max2);
}

template <typename T>
__global__ void adamw_fused_32bit_kernel(const AdamWSegment* __restrict__ segs, int num_segs,
                                         const am::StepScalars s) {
  const int64_t gb = blockIdx.x;
  const AdamWSegment& seg = find_segment(segs, num_segs, gb);
  const int64_t i = (gb - seg.block_begin) * a8::kBlock + threadIdx.x;
  if (i >= seg.n) return;
  T* p = static_cast<T*>(seg.p);
  float* m = static_cast<float*>(seg.s1);
  float* v = static_cast<float*>(seg.s2);
  float mi = m[i];
  float vi = v[i];
  T pi = round_to<T>(am::adam_update(to_float(p[i]), to_float(static_cast<const T*>(seg.g)[i]), mi, vi, s));
  if (s.apply_decay) pi = round_to<T>(am::decay_update(to_float(pi), s));
  p[i] = pi;
  m[i] = mi;
  v[i] = vi;
}

// ---------------------------------------------------------------------------------------------------
// Launcher.
// ---------------------------------------------------------------------------------------------------

template <typename T>
void launch(AdamWFormat format, const AdamWSegment* segs, int num_segs, int64_t total_blocks, const float* q1,
            const float* q2, const am::StepScalars& s, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(total_blocks));
  if (format == AdamWFormat::kBlockwise8bit) {
    adamw_fused_8bit_kernel<T><<<grid, kThreads, 0, stream>>>(segs, num_segs, q1, q2, s);
  } else {
    adamw_fused_32bit_kernel<T><<<grid, kThreads, 0, stream>>>(segs, num_segs, s);
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------------
// Tensor glue.
// ---------------------------------------------------------------------------------------------------

void step(AdamWFormat format, const std::vector<AdamWSegment>& segs, int64_t total_blocks, at::ScalarType dtype,
          at::Device device, const am::StepScalars& s, const float* qmap1, const float* qmap2) {
  TORCH_CHECK(total_blocks < (int64_t{1} << 31), "adamw_fused_step: ", total_blocks, " blocks exceed one grid");
  TORCH_CHECK(segs.size() < (size_t{1} << 31), "adamw_fused_step: too many segments");
  const c10::cuda::CUDAGuard guard(device);
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  // The table goes to the device through pinned memory: the caching host allocator keeps the staging buffer
  // alive until the copy on this stream has run, and the device buffer is stream-ordered with the kernel.
  const int64_t bytes = static_cast<int64_t>(segs.size() * sizeof(AdamWSegment));
  at::Tensor host = at::empty({bytes}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  std::memcpy(host.data_ptr(), segs.data(), static_cast<size_t>(bytes));
  const at::Tensor table = host.to(device, /*non_blocking=*/true);
  const auto* d_segs = reinterpret_cast<const AdamWSegment*>(table.data_ptr());
  const int num = static_cast<int>(segs.size());
  switch (dtype) {
    case at::kFloat: launch<float>(format, d_segs, num, total_blocks, qmap1, qmap2, s, stream); break;
    case at::kBFloat16: launch<__nv_bfloat16>(format, d_segs, num, total_blocks, qmap1, qmap2, s, stream); break;
    default: TORCH_CHECK(false, "adamw_fused_step: params must be float32 or bfloat16, found ", dtype);
  }
  check_launch("adamw_fused_step");
}

}  // namespace qtrain::ops::adamw_fused_cuda
