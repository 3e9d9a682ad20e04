// Float32 arithmetic rounded once per operation, on the host and in CUDA device code alike, so a CPU
// reference and a CUDA kernel that share per-element math (nf4_math.h, adamw_math.h) agree bit for bit.
// Device code uses the _rn intrinsics, which nvcc never contracts into FMAs; host code relies on the
// x86-64 baseline having no FMA instruction to contract into (an FMA-capable host target, e.g. aarch64 or
// -march=native, needs -ffp-contract=off: the reference-vs-fast and CPU-vs-CUDA tests would catch it).
#pragma once
#include <cmath>

#if defined(__CUDACC__)
#define QTRAIN_HD __host__ __device__ __forceinline__
#else
#define QTRAIN_HD inline
#endif

namespace qtrain::ops::rounding {

QTRAIN_HD float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
QTRAIN_HD float add_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
QTRAIN_HD float div_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}
QTRAIN_HD float sqrt_rn(float a) {
#if defined(__CUDA_ARCH__)
  return __fsqrt_rn(a);
#else
  return std::sqrt(a);
#endif
}

}  // namespace qtrain::ops::rounding
