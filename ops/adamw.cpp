// AdamW tensor API: argument checks, device dispatch, state creation, and the pure-libtorch fallback used as
// an independent comparison path. The math lives in ops/adamw_math.h.
#include "ops/adamw.h"
#include "ops/adamw_math.h"

#include <ATen/core/grad_mode.h>
#include <c10/util/BFloat16.h>

#include <cmath>

namespace qtrain::ops {

namespace {

const char* kind_name(AdamWStateKind k) {
  switch (k) {
    case AdamWStateKind::kFloat32: return "float32";
  }
  TORCH_CHECK(false, "adamw: unknown AdamWStateKind value ", static_cast<int>(k), " (expected kFloat32)");
}

bool is_param_dtype(at::ScalarType t) { return t == at::kFloat || t == at::kBFloat16; }

void check_param(const at::Tensor& param, const char* fn) {
  TORCH_CHECK(param.defined(), fn, ": tensor param is undefined");
  TORCH_CHECK(is_param_dtype(param.scalar_type()), fn, ": tensor param must be float32 or bfloat16, found ",
              param.scalar_type());
  TORCH_CHECK(param.numel() > 0, fn, ": tensor param must have at least one element, found shape ", param.sizes());
  TORCH_CHECK(param.is_contiguous(), fn, ": tensor param must be contiguous (it is updated in place), found strides ",
              param.strides(), " for shape ", param.sizes());
}

void check_state_tensor(const at::Tensor& t, const char* name, const at::Tensor& param, const char* fn) {
  TORCH_CHECK(t.defined(), fn, ": state.", name, " is undefined (create the state with make_adamw_state)");
  TORCH_CHECK(t.scalar_type() == at::kFloat, fn, ": state.", name, " must be float32, found ", t.scalar_type());
  TORCH_CHECK(t.sizes() == param.sizes(), fn, ": state.", name, " must have the param's shape ", param.sizes(),
              ", found ", t.sizes());
  TORCH_CHECK(t.device() == param.device(), fn, ": state.", name, " must be on the param's device ",
              param.device(), ", found ", t.device());
  TORCH_CHECK(t.is_contiguous(), fn, ": state.", name, " must be contiguous, found strides ", t.strides());
  TORCH_CHECK(!t.is_same(param), fn, ": state.", name, " must not be the param itself");
}

void check_args(const at::Tensor& param, const at::Tensor& grad, const AdamWState& state, const char* fn) {
  check_param(param, fn);
  TORCH_CHECK(grad.defined(), fn, ": tensor grad is undefined (did backward reach this param?)");
  TORCH_CHECK(grad.sizes() == param.sizes(), fn, ": tensor grad must have the param's shape ", param.sizes(),
              ", found ", grad.sizes());
  TORCH_CHECK(grad.scalar_type() == param.scalar_type(), fn, ": tensor grad must have the param's dtype ",
              param.scalar_type(), ", found ", grad.scalar_type());
  TORCH_CHECK(grad.device() == param.device(), fn, ": tensor grad must be on the param's device ", param.device(),
              ", found ", grad.device());
  switch (state.kind) {
    case AdamWStateKind::kFloat32:
      check_state_tensor(state.exp_avg, "exp_avg", param, fn);
      check_state_tensor(state.exp_avg_sq, "exp_avg_sq", param, fn);
      TORCH_CHECK(!state.exp_avg.is_same(state.exp_avg_sq), fn, ": state.exp_avg and state.exp_avg_sq must be "
                  "distinct tensors");
      return;
  }
  (void)kind_name(state.kind);  // throws, naming the bad value
}

// In-place writes through raw pointers bypass the version counter; bump it so autograd still detects a
// param modified after being saved for backward, exactly as an in-place ATen op would.
void bump_version(const at::Tensor& t) {
  if (!t.is_inference()) t.unsafeGetTensorImpl()->bump_version();
}

void step_cpu(at::Tensor& param, const at::Tensor& grad, AdamWState& state, const adamw_math::StepScalars& s) {
  const at::Tensor g = grad.contiguous();
  const int64_t n = param.numel();
  float* m = state.exp_avg.data_ptr<float>();
  float* v = state.exp_avg_sq.data_ptr<float>();
  switch (param.scalar_type()) {
    case at::kFloat:
      adamw_cpu::step_fast(param.data_ptr<float>(), g.data_ptr<float>(), m, v, n, s);
      return;
    case at::kBFloat16:
      adamw_cpu::step_fast(param.data_ptr<c10::BFloat16>(), g.data_ptr<c10::BFloat16>(), m, v, n, s);
      return;
    default: break;
  }
  TORCH_CHECK(false, "adamw_step: tensor param must be float32 or bfloat16, found ", param.scalar_type());
}

}  // namespace

adamw_math::StepScalars adamw_step_scalars(const AdamWParams& p, int64_t step, double gnorm_scale) {
  TORCH_CHECK(step >= 1, "adamw_step: step is 1-based and must be >= 1, found ", step);
  TORCH_CHECK(std::isfinite(p.lr) && p.lr >= 0.0, "adamw_step: lr must be finite and >= 0, found ", p.lr);
  TORCH_CHECK(p.beta1 >= 0.0 && p.beta1 < 1.0, "adamw_step: beta1 must be in [0, 1), found ", p.beta1);
  TORCH_CHECK(p.beta2 >= 0.0 && p.beta2 < 1.0, "adamw_step: beta2 must be in [0, 1), found ", p.beta2);
  TORCH_CHECK(std::isfinite(p.eps) && p.eps >= 0.0, "adamw_step: eps must be finite and >= 0, found ", p.eps);
  TORCH_CHECK(std::isfinite(p.weight_decay) && p.weight_decay >= 0.0,
              "adamw_step: weight_decay must be finite and >= 0, found ", p.weight_decay);
  TORCH_CHECK(std::isfinite(gnorm_scale) && gnorm_scale > 0.0,
              "adamw_step: gnorm_scale must be finite and > 0, found ", gnorm_scale);
  return adamw_math::make_step_scalars(p.lr, p.beta1, p.beta2, p.eps, p.weight_decay, step, gnorm_scale);
}

AdamWState make_adamw_state(const at::Tensor& param, AdamWStateKind kind) {
  TORCH_CHECK(param.defined(), "make_adamw_state: tensor param is undefined");
  TORCH_CHECK(is_param_dtype(param.scalar_type()), "make_adamw_state: tensor param must be float32 or bfloat16, "
              "found ", param.scalar_type());
  TORCH_CHECK(param.numel() > 0, "make_adamw_state: tensor param must have at least one element, found shape ",
              param.sizes());
  AdamWState s;
  s.kind = kind;
  switch (kind) {
    case AdamWStateKind::kFloat32: {
      const at::TensorOptions opts = at::TensorOptions().dtype(at::kFloat).device(param.device());
      s.exp_avg = at::zeros(param.sizes(), opts);
      s.exp_avg_sq = at::zeros(param.sizes(), opts);
      return s;
    }
  }
  (void)kind_name(kind);  // throws, naming the bad value
  return s;
}

void adamw_step(at::Tensor& param, const at::Tensor& grad, AdamWState& state, int64_t step,
                const AdamWParams& params, double gnorm_scale) {
  const at::NoGradGuard no_grad;
  check_args(param, grad, state, "adamw_step");
  const adamw_math::StepScalars s = adamw_step_scalars(params, step, gnorm_scale);
  if (param.is_cpu()) {
    step_cpu(param, grad, state, s);
  } else {
#if defined(QTRAIN_WITH_CUDA)
    TORCH_CHECK(param.is_cuda(), "adamw_step: tensor param must be on the CPU or a CUDA device, found ",
                param.device());
    adamw_cuda::step(param, grad, state, s);
#else
    TORCH_CHECK(false, "adamw_step: tensor param must be on the CPU (this build has no CUDA kernels), found ",
                param.device());
#endif
  }
  bump_version(param);
  bump_version(state.exp_avg);
  bump_version(state.exp_avg_sq);
}

void adamw_step_fallback(at::Tensor& param, const at::Tensor& grad, AdamWState& state, int64_t step,
                         const AdamWParams& params, double gnorm_scale) {
  const at::NoGradGuard no_grad;
  check_args(param, grad, state, "adamw_step_fallback");
  const adamw_math::StepScalars s = adamw_step_scalars(params, step, gnorm_scale);
  // Each op is one float32 rounding, in the order of adamw_math::adam_update; the scalars are float32 values
  // held in doubles, so ATen's float opmath casts them back without rounding.
  const at::Tensor g = grad.to(at::kFloat) * static_cast<double>(s.gnorm_scale);
  const at::Tensor m = state.exp_avg * static_cast<double>(s.beta1) + g * static_cast<double>(s.one_minus_beta1);
  const at::Tensor v =
      state.exp_avg_sq * static_cast<double>(s.beta2) + (g * g) * static_cast<double>(s.one_minus_beta2);
  // at::sqrt on float32 CPU tensors is not correctly rounded (torch 2.11, AVX512 build: ~17% of random inputs
  // are off by an ulp); sqrt in double rounded to float32 is (53 >= 2*24 + 2 bits), on every device.
  const at::Tensor sqrt_v = v.to(at::kDouble).sqrt().to(at::kFloat);
  const at::Tensor update = (m / (sqrt_v + static_cast<double>(s.eps_c2))) * static_cast<double>(s.step_size);
  at::Tensor p = (param.to(at::kFloat) + update).to(param.scalar_type());
  if (s.apply_decay) p = (p.to(at::kFloat) * static_cast<double>(s.decay)).to(param.scalar_type());
  state.exp_avg.copy_(m);
  state.exp_avg_sq.copy_(v);
  param.copy_(p);
}

}  // namespace qtrain::ops
