// AdamW with bitsandbytes' semantics (design.md decision 8, formats.md §2.4): the update of
// bnb.optim.AdamW's 32-bit kernel (kOptimizer32bit2State), in place on one parameter. Tensor API with
// checks and device dispatch (CPU / CUDA), plus a pure-libtorch fallback the kernels are compared with.
//
//   g  = gnorm_scale * g
//   m  = b1*m + (1-b1)*g ;  v = b2*v + (1-b2)*g*g                        (fp32 state, fp32 math)
//   c1 = 1 - b1^t ;  c2 = sqrt(1 - b2^t) ;  step_size = -lr*c2/c1
//   p  = p + step_size * m / (sqrt(v) + eps*c2)   -> rounded to p's dtype
//   if wd > 0:  p = p * (1 - lr*wd)               -> rounded to p's dtype again (decay AFTER the step)
//
// torch.optim.AdamW decays BEFORE the step; with wd = 0 (the QLoRA recipe) the two agree up to rounding.
// bitsandbytes 0.50's CPU backend also decays before the step and rounds a bf16 param once: only its CUDA
// kernel has the order above (tests/oracle/test_adamw_bnb.py documents both).
//
// Rounding: every float32 operation is rounded once, in the order written above (ops/adamw_math.h); the
// per-step scalars (b1, 1-b1, b2, 1-b2, step_size, eps*c2, 1-lr*wd, gnorm_scale) are computed in double on
// the host and rounded once to float32. The CPU reference, the CPU fast path, the CUDA kernel and the
// libtorch fallback produce the same bits.
//
// Step count: kept by the caller (the trainer's optimizer step, saved with the trainer state), passed in
// 1-based. All adapter parameters step together, so one counter serves them all; the state holds tensors only.
//
// What slots in later: 8-bit blockwise state (formats.md §2.3) is another AdamWStateKind with its own
// tensors in AdamWState (codes, absmax, maps) and its own kernel behind the same adamw_step; paging moves the
// state tensors between pinned host memory and a device pool between steps (design.md decision 8), so
// adamw_step only requires the state to be on the param's device when it is called.
#pragma once
#include "ops/adamw_math.h"

#include <ATen/ATen.h>

#include <cstdint>

namespace qtrain::ops {

struct AdamWParams {
  double lr = 1e-3;            // bnb's default; recipes always set it
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;   // QLoRA's value (bnb.optim.AdamW defaults to 1e-2)
};

enum class AdamWStateKind : uint8_t {
  kFloat32,  // exp_avg and exp_avg_sq in float32 (bnb optim_bits=32)
  // kBlockwise8bit (formats.md §2.3) to come.
};

struct AdamWState {
  AdamWStateKind kind = AdamWStateKind::kFloat32;
  at::Tensor exp_avg;     // m: float32, the param's shape, contiguous, on the param's device
  at::Tensor exp_avg_sq;  // v: same
};

// Zero-initialised state for `param` (float32 or bfloat16, any shape, numel >= 1) on its device.
AdamWState make_adamw_state(const at::Tensor& param, AdamWStateKind kind = AdamWStateKind::kFloat32);

// One AdamW step on `param` in place. param: a contiguous float32 or bfloat16 tensor (a leaf that requires
// grad is fine: the update runs under NoGradGuard and bumps the version counter like any in-place op);
// grad: the param's shape, dtype and device (any strides); state: from make_adamw_state(param) and the
// previous steps; step: 1-based; gnorm_scale: multiplies the gradient first (1 unless clipping).
// Throws (TORCH_CHECK) naming the argument at fault on any mismatch or out-of-range hyper-parameter.
void adamw_step(at::Tensor& param, const at::Tensor& grad, AdamWState& state, int64_t step,
                const AdamWParams& params, double gnorm_scale = 1.0);

// Same contract and bits, with libtorch tensor ops only (any device): the independent path the raw-pointer
// back ends are compared with.
void adamw_step_fallback(at::Tensor& param, const at::Tensor& grad, AdamWState& state, int64_t step,
                         const AdamWParams& params, double gnorm_scale = 1.0);

// The validated per-step float32 scalars both paths use (throws on an out-of-range argument).
adamw_math::StepScalars adamw_step_scalars(const AdamWParams& params, int64_t step, double gnorm_scale);

// ---- raw-pointer back ends (tests compare them bit for bit) ----
namespace adamw_cpu {

// T in {float, c10::BFloat16}. p, g [n] of T; m, v [n] float32, updated in place.
// Scalar reference: the specification, element by element in the order of formats.md §2.4.
template <typename T>
void step_reference(T* p, const T* g, float* m, float* v, int64_t n, const adamw_math::StepScalars& s);
// Same contract and bits; chunks in parallel (at::parallel_for) with restrict-qualified inner loops.
template <typename T>
void step_fast(T* p, const T* g, float* m, float* v, int64_t n, const adamw_math::StepScalars& s);

}  // namespace adamw_cpu

#if defined(QTRAIN_WITH_CUDA)
namespace adamw_cuda {
// Tensors already checked by adamw_step (same CUDA device, contiguous, dtypes); launches on the current stream.
void step(at::Tensor& param, const at::Tensor& grad, AdamWState& state, const adamw_math::StepScalars& s);
}  // namespace adamw_cuda
#endif

}  // namespace qtrain::ops
