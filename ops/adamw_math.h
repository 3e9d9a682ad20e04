// Per-element AdamW math with bitsandbytes' semantics (formats.md §2.4, kOptimizer32bit2State), shared by the
// CPU reference, the CPU fast path and the CUDA kernel so the three agree bit for bit by construction.
// No torch here: plain floats, usable from host code and from nvcc device code.
#pragma once
#include <cmath>
#include <cstdint>

#include "ops/rounding.h"

namespace qtrain::ops::adamw_math {

using rounding::add_rn;
using rounding::div_rn;
using rounding::mul_rn;
using rounding::sqrt_rn;

// The per-step scalars, computed once on the host in double from the double hyper-parameters and rounded
// once to float32. bnb's CUDA kernel computes them in float32 with powf on the device; doing it on the host
// in double is at least as accurate and makes the CPU and CUDA paths see identical bits (device powf and
// host std::pow may differ by an ulp).
struct StepScalars {
  float beta1 = 0.0f;            // b1
  float one_minus_beta1 = 0.0f;  // 1 - b1
  float beta2 = 0.0f;            // b2
  float one_minus_beta2 = 0.0f;  // 1 - b2
  float step_size = 0.0f;        // -lr * c2 / c1, c1 = 1 - b1^t, c2 = sqrt(1 - b2^t)
  float eps_c2 = 0.0f;           // eps * c2: bnb's eps placement (== eps on the bias-corrected sqrt(v))
  float gnorm_scale = 1.0f;      // g is multiplied by this first (1 unless clipping)
  float decay = 1.0f;            // 1 - lr * wd
  bool apply_decay = false;      // wd > 0: bnb skips the multiply (and its rounding) entirely otherwise
};

// t is the 1-based step number. Inputs are validated by the caller (ops/adamw.cpp).
inline StepScalars make_step_scalars(double lr, double beta1, double beta2, double eps, double weight_decay,
                                     int64_t t, double gnorm_scale) {
  const double c1 = 1.0 - std::pow(beta1, static_cast<double>(t));
  const double c2 = std::sqrt(1.0 - std::pow(beta2, static_cast<double>(t)));
  StepScalars s;
  s.beta1 = static_cast<float>(beta1);
  s.one_minus_beta1 = static_cast<float>(1.0 - beta1);
  s.beta2 = static_cast<float>(beta2);
  s.one_minus_beta2 = static_cast<float>(1.0 - beta2);
  s.step_size = static_cast<float>(-lr * c2 / c1);
  s.eps_c2 = static_cast<float>(eps * c2);
  s.gnorm_scale = static_cast<float>(gnorm_scale);
  s.decay = static_cast<float>(1.0 - lr * weight_decay);
  s.apply_decay = weight_decay > 0.0;
  return s;
}

// One element of the Adam part, in the order of formats.md §2.4:
//   g = gnorm_scale*g;  m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*(g*g);  p = p + step_size*(m/(sqrt(v) + eps*c2))
// m and v are updated in place; returns the new p in float32, before it is rounded to the param's dtype.
QTRAIN_HD float adam_update(float p, float g_in, float& m, float& v, const StepScalars& s) {
  const float g = mul_rn(s.gnorm_scale, g_in);
  m = add_rn(mul_rn(s.beta1, m), mul_rn(s.one_minus_beta1, g));
  v = add_rn(mul_rn(s.beta2, v), mul_rn(s.one_minus_beta2, mul_rn(g, g)));
  return add_rn(p, mul_rn(s.step_size, div_rn(m, add_rn(sqrt_rn(v), s.eps_c2))));
}

// Decoupled weight decay, applied AFTER the Adam step to the param already rounded to its dtype (bnb's
// p_vals is of the param's type T, so a bf16 param is rounded after the step and again after the decay).
QTRAIN_HD float decay_update(float p_rounded, const StepScalars& s) { return mul_rn(p_rounded, s.decay); }

}  // namespace qtrain::ops::adamw_math
