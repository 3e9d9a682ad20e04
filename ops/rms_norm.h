// RMSNorm with transformers' LlamaRMSNorm semantics, fused on the CPU:
//
//   xf = float32(x);  rstd = rsqrt(mean(xf², -1) + eps);  y = weight * T(xf · rstd)     (T = x's dtype)
//
// the last product in the result dtype of weight·x (for bf16 x and weight: bf16(float(w) · float(bf16(x̂)))).
// One pass for the row's sum of squares and one for the scale, instead of ATen's seven kernels and their
// [..., H] fp32 temporaries; backward is hand-written and keeps only x and the per-row rstd [..., 1] fp32.
#pragma once

#include <ATen/ATen.h>

namespace qtrain::ops {

// x [..., H] → [..., H]; weight [H], frozen. Differentiable in x. The fused kernel runs for CPU x and weight of
// one dtype (float32, bfloat16 or float16) with a weight that does not require grad; anything else (CUDA,
// mixed or other dtypes, a trainable weight) takes rms_norm_reference, so the result never depends on that
// choice beyond the rounding of the row sums (the fused sum of squares adds in another order than ATen's mean).
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps);

// The pure-libtorch composition (autograd through ATen): the fallback and the test oracle.
at::Tensor rms_norm_reference(const at::Tensor& x, const at::Tensor& weight, double eps);

}  // namespace qtrain::ops
