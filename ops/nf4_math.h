// Per-element NF4/FP4 math shared by the CPU reference, the CPU fast path and the CUDA kernels, so the
// three agree by construction. No torch here: plain floats, usable from host code and from nvcc device code.
// Bit-exact with bitsandbytes 0.50 (CPU backend); see docs in ops/nf4.h and formats.md §1.
#pragma once
#include <cstdint>

#include "ops/rounding.h"

namespace qtrain::ops::nf4_math {

// Every product/sum below is rounded once per operation (no FMA contraction), as bitsandbytes computes
// them with separate torch ops / SSE multiplies (ops/rounding.h).
using rounding::add_rn;
using rounding::div_rn;
using rounding::mul_rn;

// The 4-bit code tables (formats.md §1.1, §1.2), index = 4-bit code. FP4 is bnb's raw list divided by 12
// in float32 (get_4bit_type), which is what these literals round to.
struct CodeTables {
  float nf4[16] = {-1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
                   -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
                   0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
                   0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f};
  float fp4[16] = {0.0f, 0.0625f / 12.0f, 8.0f / 12.0f, 12.0f / 12.0f, 4.0f / 12.0f, 6.0f / 12.0f,
                   2.0f / 12.0f, 3.0f / 12.0f, -0.0f, -0.0625f / 12.0f, -8.0f / 12.0f, -12.0f / 12.0f,
                   -4.0f / 12.0f, -6.0f / 12.0f, -2.0f / 12.0f, -3.0f / 12.0f};
};

// bnb 0.50 CPU quantizes with torch.bucketize(scaled, midpoints) over the codes sorted ascending, so the
// thresholds are the float32 midpoints (a+b)/2 of adjacent sorted codes and a tie goes to the LOWER code.
// (The CUDA decision tree uses double literals rounded to float; a few differ from these by one ulp.)
// sorted position -> code: NF4 is already sorted; FP4's order is a stable argsort (+0 before -0), observed
// as bnb's _get_4bit_quantize_bounds("fp4") = [11,10,13,12,15,14,9,0,8,1,6,7,4,5,2,3].
QTRAIN_HD uint8_t fp4_sorted_code(int pos) {
  constexpr uint8_t kOrder[16] = {11, 10, 13, 12, 15, 14, 9, 0, 8, 1, 6, 7, 4, 5, 2, 3};
  return kOrder[pos];
}

// Midpoints, recomputed exactly as bnb does ((a + b) / 2 in float32) from the tables above.
struct Thresholds {
  float t[15];
};
QTRAIN_HD Thresholds make_thresholds(bool fp4) {
  CodeTables c;
  Thresholds th{};
  for (int i = 0; i < 15; ++i) {
    const float a = fp4 ? c.fp4[fp4_sorted_code(i)] : c.nf4[i];
    const float b = fp4 ? c.fp4[fp4_sorted_code(i + 1)] : c.nf4[i + 1];
    th.t[i] = mul_rn(add_rn(a, b), 0.5f);
  }
  return th;
}

// Code of one scaled value s (|s| <= 1 up to rounding): the number of thresholds strictly below s, mapped
// through the FP4 sort order. Branch-free so the CPU loop vectorises and CUDA threads do not diverge.
QTRAIN_HD uint8_t quantize_scaled(float s, const Thresholds& th, bool fp4) {
  int pos = 0;
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int i = 0; i < 15; ++i) pos += (th.t[i] < s) ? 1 : 0;
  return fp4 ? fp4_sorted_code(pos) : static_cast<uint8_t>(pos);
}

// bnb clamps absmax to 1e-38 (a float32 subnormal) before taking its reciprocal, so an all-zero block
// scales to 0 (code 7 for NF4, code 0 for FP4) instead of NaN. Full blocks store the unclamped absmax and
// multiply by the reciprocal; the partial last block stores the CLAMPED absmax and divides (two different
// torch expressions in bnb's default backend quantize_4bit).
constexpr float kAbsmaxFloor = 1e-38f;
QTRAIN_HD float clamp_absmax(float am) { return am < kAbsmaxFloor ? kAbsmaxFloor : am; }

// NaN-propagating max of |x|: a NaN or inf weight must surface in absmax so the caller can reject it.
QTRAIN_HD float absmax_step(float am, float x) {
  const float a = x < 0.0f ? -x : x;
  return (a <= am || am != am) ? am : a;  // once NaN, stays NaN; a NaN x fails `a <= am` and is taken
}

// ---- nested (double) quantization of the absmax vector: bnb 0.50 CPU quantize_blockwise ----
// It maps a scaled value v in [-1, 1] to one of 65536 uniform bins and looks the 8-bit code up in a table
// built from the 256-entry dynamic map (nearest code by float32 midpoints, ties to the lower code). This
// is coarser than a true nearest search near 0 (0.0 maps to code 131, not 127) and is what bnb stores.
constexpr int kNestedLutSize = 65536;
constexpr int kNestedBlocksize = 256;

// Bin of v: ((clamp(v) + 1) * 0.5) * 65535 + 0.5, each step rounded to float, then truncated.
QTRAIN_HD int nested_lut_index(float v) {
  v = v < -1.0f ? -1.0f : (v > 1.0f ? 1.0f : v);
  float t = mul_rn(add_rn(v, 1.0f), 0.5f);
  t = mul_rn(t, static_cast<float>(kNestedLutSize - 1));
  t = add_rn(t, 0.5f);
  return static_cast<int>(t);
}

// Value represented by bin i of the LUT: -1 + (2*i)/65535 in float32.
QTRAIN_HD float nested_lut_bin_value(int i) {
  return add_rn(-1.0f, div_rn(2.0f * static_cast<float>(i), static_cast<float>(kNestedLutSize - 1)));
}

// The same table without the table: the code of bin i is the number of midpoints
// mid[k] = (dyn[k] + dyn[k+1]) / 2 (float32, k < 255) strictly below the bin's value, found by binary search
// over the non-decreasing midpoints of the sorted map (a tie stays on the lower code, as in
// nf4_cpu::build_nested_lut). The CUDA quantizer uses it so no 65536-entry table is built on the host per call.
QTRAIN_HD float nested_midpoint(float lower, float upper) { return mul_rn(add_rn(lower, upper), 0.5f); }
QTRAIN_HD int nested_code_of_bin(int bin, const float* mid /* [255] */) {
  const float v = nested_lut_bin_value(bin);
  int lo = 0, hi = 255;  // the answer is in [0, 255]
  while (lo < hi) {
    const int m = (lo + hi) / 2;
    if (mid[m] < v) {
      lo = m + 1;
    } else {
      hi = m;
    }
  }
  return lo;
}

// ---- dequantization ----
// out = code_value * absmax as one float32 product, cast once to the output dtype (CUDA and CPU agree).
QTRAIN_HD float dequant_value(float code_value, float absmax) { return mul_rn(code_value, absmax); }

// Nested absmax decode: dyn[q] * absmax2 + offset, two separate float32 roundings (bnb's
// dequantize_blockwise followed by `absmax += offset`).
QTRAIN_HD float decode_nested_absmax(float dyn_value, float absmax2, float offset) {
  return add_rn(mul_rn(dyn_value, absmax2), offset);
}

}  // namespace qtrain::ops::nf4_math
