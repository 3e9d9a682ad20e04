// Per-element and per-block math of AdamW with 8-bit blockwise state, bitsandbytes' semantics (formats.md
// §2.3, the CUDA kernel kOptimizerStatic8bit2StateBlockwise of bnb 0.50), shared by the CPU reference, the
// CPU fast path and the CUDA kernel so the three agree bit for bit by construction. No torch here.
//
// One block = 256 consecutive elements of one parameter (bnb's BLOCKSIZE_2STATE since 0.44). Per block:
//   1. dequantize   m = qmap1[c1]·absmax1[b],  v = qmap2[c2]·absmax2[b]        (signed / unsigned dynamic map)
//   2. update       g = gnorm_scale·g;  v = v·b2 + ((1-b2)·g)·g;  m = m·b1 + (1-b1)·g   (bnb's operand order)
//                   a NaN/Inf g sets m = v = 0 for its element and leaves its parameter alone
//   3. new absmax   max |m|, max |v| over the block (fmaxf from -FLT_MAX)
//   4. parameter    p = p + step_size·(m / (sqrt(v) + eps·c2))  -> rounded to p's dtype; then decay (wd > 0)
//   5. requantize   code = nearest entry of the map to m/absmax by bnb's bisection (quantize_2D; a tie goes to
//                   the bisection's pivot); for m, a code whose sign differs from m's moves one step towards it
//
// The last block of a parameter with n % 256 != 0: bnb's block load pads the missing elements with g = 0,
// c1 = 128, c2 = 0, and the padding takes part in the absmax reduction (its m = qmap1[128]·absmax1·b1 is
// tiny but not 0). We reproduce that (padding_state), so codes and absmax equal bnb's bit for bit in math.
//
// Deviations from bnb's CUDA kernel, all inside float32 rounding: bnb builds the per-step scalars with __powf
// and __fdividef on the device (we use adamw_math::StepScalars: double on the host, rounded once, as the
// 32-bit path); bnb divides by absmax with __fdividef (≤ 2 ulp; we round correctly); nvcc contracts bnb's
// a·b + c into FMAs (we round every operation, as written). The bnb CPU backend (0.50.2) differs more: it
// decays before the step and requantizes with quantize_blockwise (no sign preservation); see
// tests/oracle/test_adamw_bnb.py.
#pragma once
#include <cfloat>
#include <cmath>
#include <cstdint>

#include "ops/adamw_math.h"
#include "ops/rounding.h"

namespace qtrain::ops::adamw8bit_math {

using rounding::add_rn;
using rounding::div_rn;
using rounding::mul_rn;
using rounding::sqrt_rn;
using adamw_math::StepScalars;

constexpr int kBlock = 256;       // elements per absmax (bnb BLOCKSIZE_2STATE)
constexpr uint8_t kPadCode1 = 128;  // what bnb's block load puts in the missing state1 codes of a tail block

QTRAIN_HD bool finite(float x) { return !std::isnan(x) && !std::isinf(x); }

QTRAIN_HD float fmax_(float a, float b) {
#if defined(__CUDA_ARCH__)
  return fmaxf(a, b);
#else
  return std::fmax(a, b);  // IEEE maxNum as fmaxf: a NaN operand loses
#endif
}

QTRAIN_HD bool signbit_(float x) {
#if defined(__CUDA_ARCH__)
  return signbit(x);
#else
  return std::signbit(x);
#endif
}

// bnb's quantize_2D<SIGNED>: bisection over the sorted 256-entry map `code` (code[63], code[127], code[191]
// are bnb's "quadrants"), then the nearer of the pivot and the bracketing neighbour by a float32 midpoint.
// The bracket starts at [-1 or 0, 1.0] as values, so x outside the map clamps to its ends. A NaN x ends at 0.
template <bool kSigned>
QTRAIN_HD uint8_t quantize_code(const float* code, float x) {
  int pivot = 127;
  int upper_pivot = 255;
  int lower_pivot = 0;
  float lower = kSigned ? -1.0f : 0.0f;
  float upper = 1.0f;
  float val = code[127];
  for (int i = 64; i > 0; i >>= 1) {
    if (x > val) {
      lower_pivot = pivot;
      lower = val;
      pivot += i;
    } else {
      upper_pivot = pivot;
      upper = val;
      pivot -= i;
    }
    val = code[pivot];
  }
  if (x > val) {
    const float midpoint = mul_rn(add_rn(upper, val), 0.5f);
    return static_cast<uint8_t>(x > midpoint ? upper_pivot : pivot);
  }
  const float midpoint = mul_rn(add_rn(lower, val), 0.5f);
  return static_cast<uint8_t>(x < midpoint ? lower_pivot : pivot);
}

// Step 2 for one element with a finite gradient: m and v hold the dequantized state and are updated in place.
QTRAIN_HD void update_state(float g_in, float& m, float& v, const StepScalars& s) {
  const float g = mul_rn(g_in, s.gnorm_scale);
  v = add_rn(mul_rn(v, s.beta2), mul_rn(mul_rn(s.one_minus_beta2, g), g));
  m = add_rn(mul_rn(m, s.beta1), mul_rn(s.one_minus_beta1, g));
}

// Step 4 before rounding to the param's dtype: the same expression as the 32-bit kernel.
QTRAIN_HD float param_update(float p, float m, float v, const StepScalars& s) {
  return add_rn(p, mul_rn(s.step_size, div_rn(m, add_rn(sqrt_rn(v), s.eps_c2))));
}

// The state of one padding element of a tail block (g = 0, code1 128, code2 0) after step 2: it takes part
// in the absmax reduction, as in bnb (|m| = qmap1[128]·absmax1·b1, tiny but not 0; v = 0).
QTRAIN_HD void padding_state(const float* qmap1, const float* qmap2, float absmax1_old, float absmax2_old,
                             const StepScalars& s, float& m, float& v) {
  m = mul_rn(qmap1[kPadCode1], absmax1_old);
  v = mul_rn(qmap2[0], absmax2_old);
  update_state(0.0f, m, v, s);
}

// Step 5 for m: the nearest signed code, moved one step when its sign differs from m's (uint8 wraps as bnb's
// unsigned char does: only reachable when the block's absmax is 0, where every code dequantizes to ±0).
QTRAIN_HD uint8_t requantize_m(const float* qmap1, float m, float absmax1) {
  uint8_t c = quantize_code<true>(qmap1, div_rn(m, absmax1));
  if (signbit_(qmap1[c]) != signbit_(m)) c = static_cast<uint8_t>(m > 0.0f ? c + 1 : c - 1);
  return c;
}

QTRAIN_HD uint8_t requantize_v(const float* qmap2, float v, float absmax2) {
  return quantize_code<false>(qmap2, div_rn(v, absmax2));
}

}  // namespace qtrain::ops::adamw8bit_math
