// ggml block quantizers, written from the semantics of ggml-quants.c (llama.cpp, 2025-2026 master: the
// *_ref functions and make_qx_quants / make_qkx2_quants they call). Every float expression below is
// evaluated as the reference evaluates it: float32 operands, left to right, no contraction into FMA.
#include "export/gguf_quants.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <string>

#include <ATen/Parallel.h>
#include <c10/util/Half.h>

#include "data/error.h"

#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

namespace qtrain::gguf {
namespace {

constexpr int kQK = 256;      // K-quant super-block
constexpr int kQ32 = 32;      // Q8_0 / Q5_0 / Q5_1 block
constexpr float kGroupMaxEps = 1e-15f;  // ggml's GROUP_MAX_EPS: below it a Q6_K sub-block counts as zero

// ggml's nearest_int: adding 1.5·2²³ puts the rounded integer in the low mantissa bits (round half to even
// for |x| < 2²²). Kept bit for bit, including what it yields outside that range (later clamped).
int nearest_int(float x) {
  float v = x + 12582912.f;
  int32_t i;
  std::memcpy(&i, &v, sizeof i);
  return (i & 0x007fffff) - 0x00400000;
}

void put_u16(uint8_t* p, uint16_t v) { std::memcpy(p, &v, 2); }  // GGUF is little-endian, as is x86/arm
uint16_t get_u16(const uint8_t* p) { uint16_t v; std::memcpy(&v, p, 2); return v; }

// ---- Q8_0: d = amax/127, q = roundf(x/d) ------------------------------------------------------------------
void quantize_q8_0(const float* x, uint8_t* out, int64_t n) {
  for (int64_t b = 0; b < n / kQ32; ++b, x += kQ32, out += 34) {
    float amax = 0.0f;
    for (int j = 0; j < kQ32; ++j) amax = std::max(amax, std::fabs(x[j]));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;  // the float d, not its half: as the reference
    put_u16(out, fp32_to_fp16(d));
    for (int j = 0; j < kQ32; ++j) out[2 + j] = static_cast<uint8_t>(static_cast<int8_t>(std::roundf(x[j] * id)));
  }
}
void dequantize_q8_0(const uint8_t* in, float* y, int64_t n) {
  for (int64_t b = 0; b < n / kQ32; ++b, in += 34, y += kQ32) {
    const float d = fp16_to_fp32(get_u16(in));
    for (int j = 0; j < kQ32; ++j) y[j] = static_cast<float>(static_cast<int8_t>(in[2 + j])) * d;
  }
}

// ---- Q5_0: d = (the signed value of largest magnitude)/−16, q = trunc(x/d + 16.5) ∈ [0, 31] ---------------
void quantize_q5_0(const float* x, uint8_t* out, int64_t n) {
  for (int64_t b = 0; b < n / kQ32; ++b, x += kQ32, out += 22) {
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < kQ32; ++j) {
      if (amax < std::fabs(x[j])) { amax = std::fabs(x[j]); max = x[j]; }  // first of equal magnitudes
    }
    const float d = max / -16.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    put_u16(out, fp32_to_fp16(d));
    uint32_t qh = 0;
    for (int j = 0; j < kQ32 / 2; ++j) {
      // (int8_t)(float) truncates toward zero; the argument lies in [0.5, 32.5].
      const int q0 = std::min(31, static_cast<int>(static_cast<int8_t>(x[j] * id + 16.5f)));
      const int q1 = std::min(31, static_cast<int>(static_cast<int8_t>(x[j + 16] * id + 16.5f)));
      out[6 + j] = static_cast<uint8_t>((q0 & 0x0F) | ((q1 & 0x0F) << 4));
      qh |= static_cast<uint32_t>((q0 >> 4) & 1) << j;
      qh |= static_cast<uint32_t>((q1 >> 4) & 1) << (j + 16);
    }
    std::memcpy(out + 2, &qh, 4);
  }
}
void dequantize_q5_0(const uint8_t* in, float* y, int64_t n) {
  for (int64_t b = 0; b < n / kQ32; ++b, in += 22, y += kQ32) {
    const float d = fp16_to_fp32(get_u16(in));
    uint32_t qh;
    std::memcpy(&qh, in + 2, 4);
    for (int j = 0; j < 16; ++j) {
      const int q0 = ((in[6 + j] & 0x0F) | (((qh >> j) & 1) << 4)) - 16;
      const int q1 = ((in[6 + j] >> 4) | (((qh >> (j + 16)) & 1) << 4)) - 16;
      y[j] = static_cast<float>(q0) * d;
      y[j + 16] = static_cast<float>(q1) * d;
    }
  }
}

// ---- Q5_1: d = (max − min)/31, m = min, q = trunc((x − min)/d + 0.5) ---------------------------------------
void quantize_q5_1(const float* x, uint8_t* out, int64_t n) {
  for (int64_t b = 0; b < n / kQ32; ++b, x += kQ32, out += 24) {
    float min = x[0], max = x[0];
    for (int j = 1; j < kQ32; ++j) { min = std::min(min, x[j]); max = std::max(max, x[j]); }
    const float d = (max - min) / 31.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    put_u16(out, fp32_to_fp16(d));
    put_u16(out + 2, fp32_to_fp16(min));
    uint32_t qh = 0;
    for (int j = 0; j < 16; ++j) {
      const int q0 = static_cast<uint8_t>(static_cast<int>((x[j] - min) * id + 0.5f));
      const int q1 = static_cast<uint8_t>(static_cast<int>((x[j + 16] - min) * id + 0.5f));
      out[8 + j] = static_cast<uint8_t>((q0 & 0x0F) | ((q1 & 0x0F) << 4));
      qh |= static_cast<uint32_t>((q0 >> 4) & 1) << j;
      qh |= static_cast<uint32_t>((q1 >> 4) & 1) << (j + 16);
    }
    std::memcpy(out + 4, &qh, 4);
  }
}
void dequantize_q5_1(const uint8_t* in, float* y, int64_t n) {
  for (int64_t b = 0; b < n / kQ32; ++b, in += 24, y += kQ32) {
    const float d = fp16_to_fp32(get_u16(in));
    const float m = fp16_to_fp32(get_u16(in + 2));
    uint32_t qh;
    std::memcpy(&qh, in + 4, 4);
    for (int j = 0; j < 16; ++j) {
      const int q0 = (in[8 + j] & 0x0F) | (((qh >> j) & 1) << 4);
      const int q1 = (in[8 + j] >> 4) | (((qh >> (j + 16)) & 1) << 4);
      y[j] = static_cast<float>(q0) * d + m;
      y[j + 16] = static_cast<float>(q1) * d + m;
    }
  }
}

// ---- K-quant helpers -------------------------------------------------------------------------------------

// make_qkx2_quants: an asymmetric grid (scale, min ≤ 0) for one 32-element sub-block, searched over
// nstep+1 candidate inverse scales (rmin + rdelta·is + nmax)/(max − min), each refit by weighted least
// squares; keeps the candidate of least weighted squared error. L[i] ∈ [0, nmax]; returns the scale and
// stores −min in *neg_min.
float fit_scale_min(int n, int nmax, const float* x, const float* w, uint8_t* L, float* neg_min, float rmin,
                    float rdelta, int nstep) {
  float min = x[0], max = x[0];
  float sum_w = w[0];
  float sum_x = sum_w * x[0];
  for (int i = 1; i < n; ++i) {
    if (x[i] < min) min = x[i];
    if (x[i] > max) max = x[i];
    sum_w += w[i];
    sum_x += w[i] * x[i];
  }
  if (min > 0) min = 0;
  if (max == min) {
    std::fill(L, L + n, 0);
    *neg_min = -min;
    return 0.0f;
  }
  float iscale = static_cast<float>(nmax) / (max - min);
  float scale = 1 / iscale;
  float best_error = 0;
  for (int i = 0; i < n; ++i) {
    const int l = nearest_int(iscale * (x[i] - min));
    L[i] = static_cast<uint8_t>(std::max(0, std::min(nmax, l)));
    float diff = scale * L[i] + min - x[i];
    diff = diff * diff;
    best_error += w[i] * diff;
  }
  std::array<uint8_t, 32> aux{};
  for (int is = 0; is <= nstep; ++is) {
    iscale = (rmin + rdelta * is + nmax) / (max - min);
    float sum_l = 0, sum_l2 = 0, sum_xl = 0;
    for (int i = 0; i < n; ++i) {
      const int l = std::max(0, std::min(nmax, nearest_int(iscale * (x[i] - min))));
      aux[i] = static_cast<uint8_t>(l);
      sum_l += w[i] * l;
      sum_l2 += w[i] * l * l;
      sum_xl += w[i] * l * x[i];
    }
    const float D = sum_w * sum_l2 - sum_l * sum_l;
    if (D > 0) {
      float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
      float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
      if (this_min > 0) {
        this_min = 0;
        this_scale = sum_xl / sum_l2;
      }
      float cur_error = 0;
      for (int i = 0; i < n; ++i) {
        float diff = this_scale * aux[i] + this_min - x[i];
        diff = diff * diff;
        cur_error += w[i] * diff;
      }
      if (cur_error < best_error) {
        std::copy(aux.begin(), aux.begin() + n, L);
        best_error = cur_error;
        scale = this_scale;
        min = this_min;
      }
    }
  }
  *neg_min = -min;
  return scale;
}

// The 12-byte scales field of Q4_K/Q5_K: eight 6-bit scales and eight 6-bit mins. Sub-blocks 0-3 keep
// theirs in the low 6 bits of bytes 0-3 (scale) and 4-7 (min); sub-blocks 4-7 put their low 4 bits in
// bytes 8-11 (scale low nibble, min high nibble) and their top 2 bits in the top bits of bytes 0-7.
void pack_scales_k4(const uint8_t ls[8], const uint8_t lm[8], uint8_t s[12]) {
  for (int j = 0; j < 8; ++j) {
    if (j < 4) {
      s[j] = ls[j];
      s[j + 4] = lm[j];
    } else {
      s[j + 4] = static_cast<uint8_t>((ls[j] & 0xF) | ((lm[j] & 0xF) << 4));
      s[j - 4] |= static_cast<uint8_t>((ls[j] >> 4) << 6);
      s[j] |= static_cast<uint8_t>((lm[j] >> 4) << 6);
    }
  }
}
void unpack_scale_k4(int j, const uint8_t s[12], uint8_t* sc, uint8_t* m) {
  if (j < 4) {
    *sc = s[j] & 63;
    *m = s[j + 4] & 63;
  } else {
    *sc = static_cast<uint8_t>((s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4));
    *m = static_cast<uint8_t>((s[j + 4] >> 4) | ((s[j] >> 6) << 4));
  }
}

// Q4_K and Q5_K share everything but the grid (nmax 15 / 31), the search range and the packing of q.
// Per super-block: each 32-element sub-block gets its own (scale, min) from fit_scale_min with weights
// rms(sub-block) + |x|; the eight scales and eight mins are then quantized to 6 bits against their maxima
// (d = max_scale/63, dmin = max_min/63, both stored in f16), and every x is requantized against the
// stored d·sc and dmin·m. L [256] receives the codes.
void quantize_k_superblock(const float* x, int nmax, float rmin, float rdelta, int nstep, uint8_t* d_dmin,
                           uint8_t scales[12], uint8_t L[kQK]) {
  float sc[8], mn[8], w[32];
  float max_scale = 0, max_min = 0;
  for (int j = 0; j < 8; ++j) {
    const float* xs = x + 32 * j;
    float sum_x2 = 0;
    for (int l = 0; l < 32; ++l) sum_x2 += xs[l] * xs[l];
    const float av_x = std::sqrt(sum_x2 / 32);
    for (int l = 0; l < 32; ++l) w[l] = av_x + std::fabs(xs[l]);
    sc[j] = fit_scale_min(32, nmax, xs, w, L + 32 * j, &mn[j], rmin, rdelta, nstep);
    if (sc[j] > max_scale) max_scale = sc[j];
    if (mn[j] > max_min) max_min = mn[j];
  }
  const float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
  const float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
  uint8_t ls[8], lm[8];
  for (int j = 0; j < 8; ++j) {
    // uint8_t of the int, then min 63: as the reference (a negative code wraps and clamps to 63).
    ls[j] = std::min<uint8_t>(63, static_cast<uint8_t>(nearest_int(inv_scale * sc[j])));
    lm[j] = std::min<uint8_t>(63, static_cast<uint8_t>(nearest_int(inv_min * mn[j])));
  }
  std::memset(scales, 0, 12);
  pack_scales_k4(ls, lm, scales);
  const uint16_t d16 = fp32_to_fp16(max_scale / 63.f);
  const uint16_t dmin16 = fp32_to_fp16(max_min / 63.f);
  put_u16(d_dmin, d16);
  put_u16(d_dmin + 2, dmin16);
  for (int j = 0; j < 8; ++j) {
    uint8_t s, m;
    unpack_scale_k4(j, scales, &s, &m);
    const float d = fp16_to_fp32(d16) * s;
    if (d == 0.0f) continue;  // keep the codes of the fit
    const float dm = fp16_to_fp32(dmin16) * m;
    for (int i = 0; i < 32; ++i) {
      const int l = nearest_int((x[32 * j + i] + dm) / d);
      L[32 * j + i] = static_cast<uint8_t>(std::max(0, std::min(nmax, l)));
    }
  }
}

// ---- Q4_K ---------------------------------------------------------------------------------------------------
void quantize_q4_k(const float* x, uint8_t* out, int64_t n) {
  uint8_t L[kQK];
  for (int64_t b = 0; b < n / kQK; ++b, x += kQK, out += 144) {
    quantize_k_superblock(x, 15, -1.0f, 0.1f, 20, out, out + 4, L);
    // qs: 64-element chunks, byte l holds element l (low nibble) and element l + 32 (high nibble).
    uint8_t* q = out + 16;
    for (int j = 0; j < kQK; j += 64, q += 32) {
      for (int l = 0; l < 32; ++l) q[l] = static_cast<uint8_t>(L[j + l] | (L[j + l + 32] << 4));
    }
  }
}
void dequantize_q4_k(const uint8_t* in, float* y, int64_t n) {
  for (int64_t b = 0; b < n / kQK; ++b, in += 144) {
    const float d = fp16_to_fp32(get_u16(in));
    const float dmin = fp16_to_fp32(get_u16(in + 2));
    const uint8_t* q = in + 16;
    for (int j = 0; j < kQK; j += 64, q += 32) {
      uint8_t s, m;
      unpack_scale_k4(j / 32, in + 4, &s, &m);
      const float d1 = d * s, m1 = dmin * m;
      unpack_scale_k4(j / 32 + 1, in + 4, &s, &m);
      const float d2 = d * s, m2 = dmin * m;
      for (int l = 0; l < 32; ++l) *y++ = d1 * (q[l] & 0xF) - m1;
      for (int l = 0; l < 32; ++l) *y++ = d2 * (q[l] >> 4) - m2;
    }
  }
}

// ---- Q5_K ---------------------------------------------------------------------------------------------------
void quantize_q5_k(const float* x, uint8_t* out, int64_t n) {
  uint8_t L[kQK];
  for (int64_t b = 0; b < n / kQK; ++b, x += kQK, out += 176) {
    quantize_k_superblock(x, 31, -0.5f, 0.1f, 15, out, out + 4, L);
    uint8_t* qh = out + 16;
    uint8_t* ql = out + 48;
    std::memset(qh, 0, 32);
    // As Q4_K for the low nibbles; the fifth bit of element n+j goes to bit 2·(n/64) of qh[j], that of
    // n+j+32 to bit 2·(n/64)+1.
    uint8_t m1 = 1, m2 = 2;
    for (int c = 0; c < kQK; c += 64, ql += 32, m1 <<= 2, m2 <<= 2) {
      for (int j = 0; j < 32; ++j) {
        int l1 = L[c + j], l2 = L[c + j + 32];
        if (l1 > 15) { l1 -= 16; qh[j] |= m1; }
        if (l2 > 15) { l2 -= 16; qh[j] |= m2; }
        ql[j] = static_cast<uint8_t>(l1 | (l2 << 4));
      }
    }
  }
}
void dequantize_q5_k(const uint8_t* in, float* y, int64_t n) {
  for (int64_t b = 0; b < n / kQK; ++b, in += 176) {
    const float d = fp16_to_fp32(get_u16(in));
    const float dmin = fp16_to_fp32(get_u16(in + 2));
    const uint8_t* qh = in + 16;
    const uint8_t* ql = in + 48;
    uint8_t u1 = 1, u2 = 2;
    for (int j = 0; j < kQK; j += 64, ql += 32, u1 <<= 2, u2 <<= 2) {
      uint8_t s, m;
      unpack_scale_k4(j / 32, in + 4, &s, &m);
      const float d1 = d * s, m1 = dmin * m;
      unpack_scale_k4(j / 32 + 1, in + 4, &s, &m);
      const float d2 = d * s, m2 = dmin * m;
      for (int l = 0; l < 32; ++l) *y++ = d1 * ((ql[l] & 0xF) + ((qh[l] & u1) ? 16 : 0)) - m1;
      for (int l = 0; l < 32; ++l) *y++ = d2 * ((ql[l] >> 4) + ((qh[l] & u2) ? 16 : 0)) - m2;
    }
  }
}

// ---- Q6_K ---------------------------------------------------------------------------------------------------

// make_qx_quants with rmse_type 1 (weights x²): a symmetric grid l ∈ [−nmax, nmax−1] for one 16-element
// sub-block; the scale is the weighted least-squares fit, tried for the inverse scales −(nmax + 0.1·is)/max,
// is ∈ [−9, 9], keeping the best. L[i] = l + nmax. Returns the (signed) scale.
float fit_symmetric(int n, int nmax, const float* x, uint8_t* L) {
  float max = 0, amax = 0;
  for (int i = 0; i < n; ++i) {
    const float ax = std::fabs(x[i]);
    if (ax > amax) { amax = ax; max = x[i]; }
  }
  if (amax < kGroupMaxEps) {
    std::fill(L, L + n, 0);
    return 0.f;
  }
  float iscale = static_cast<float>(-nmax) / max;
  float sumlx = 0, suml2 = 0;
  for (int i = 0; i < n; ++i) {
    const int l = std::max(-nmax, std::min(nmax - 1, nearest_int(iscale * x[i])));
    L[i] = static_cast<uint8_t>(l + nmax);
    const float w = x[i] * x[i];
    sumlx += w * x[i] * l;
    suml2 += w * l * l;
  }
  float scale = suml2 != 0.0f ? sumlx / suml2 : 0.0f;
  float best = scale * sumlx;
  for (int is = -9; is <= 9; ++is) {
    if (is == 0) continue;
    iscale = -(nmax + 0.1f * is) / max;
    sumlx = suml2 = 0;
    for (int i = 0; i < n; ++i) {
      const int l = std::max(-nmax, std::min(nmax - 1, nearest_int(iscale * x[i])));
      const float w = x[i] * x[i];
      sumlx += w * x[i] * l;
      suml2 += w * l * l;
    }
    if (suml2 > 0 && sumlx * sumlx > best * suml2) {
      for (int i = 0; i < n; ++i) {
        const int l = nearest_int(iscale * x[i]);
        L[i] = static_cast<uint8_t>(nmax + std::max(-nmax, std::min(nmax - 1, l)));
      }
      scale = sumlx / suml2;
      best = scale * sumlx;
    }
  }
  return scale;
}

// Per super-block: sixteen 16-element sub-blocks with symmetric 6-bit grids, their scales quantized to
// int8 against the one of largest magnitude (d = −max_scale/128 in f16), codes requantized against d·sc.
void quantize_q6_k(const float* x, uint8_t* out, int64_t n) {
  uint8_t L[kQK];
  for (int64_t b = 0; b < n / kQK; ++b, x += kQK, out += 210) {
    float scales[16];
    float max_scale = 0, max_abs_scale = 0;
    for (int ib = 0; ib < 16; ++ib) {
      scales[ib] = fit_symmetric(16, 32, x + 16 * ib, L + 16 * ib);
      const float a = std::fabs(scales[ib]);
      if (a > max_abs_scale) { max_abs_scale = a; max_scale = scales[ib]; }
    }
    std::memset(out, 0, 210);
    if (max_abs_scale < kGroupMaxEps) continue;  // all zero: d = 0, every byte 0
    uint8_t* ql = out;
    uint8_t* qh = out + 128;
    int8_t* sc = reinterpret_cast<int8_t*>(out + 192);
    const float iscale = -128.f / max_scale;
    const uint16_t d16 = fp32_to_fp16(1 / iscale);
    put_u16(out + 208, d16);
    for (int ib = 0; ib < 16; ++ib) sc[ib] = static_cast<int8_t>(std::min(127, nearest_int(iscale * scales[ib])));
    for (int j = 0; j < 16; ++j) {
      const float d = fp16_to_fp32(d16) * sc[j];
      if (d == 0.0f) continue;
      for (int i = 0; i < 16; ++i) {
        const int l = std::max(-32, std::min(31, nearest_int(x[16 * j + i] / d)));
        L[16 * j + i] = static_cast<uint8_t>(l + 32);
      }
    }
    // 128-element halves: ql[l] = low nibbles of elements l (low) and l+64 (high), ql[l+32] those of
    // l+32 and l+96; qh[l] = the top two bits of l, l+32, l+64, l+96 at bits 0, 2, 4, 6.
    for (int j = 0; j < kQK; j += 128, ql += 64, qh += 32) {
      for (int l = 0; l < 32; ++l) {
        const uint8_t a = L[j + l], bb = L[j + l + 32], c = L[j + l + 64], e = L[j + l + 96];
        ql[l] = static_cast<uint8_t>((a & 0xF) | ((c & 0xF) << 4));
        ql[l + 32] = static_cast<uint8_t>((bb & 0xF) | ((e & 0xF) << 4));
        qh[l] = static_cast<uint8_t>((a >> 4) | ((bb >> 4) << 2) | ((c >> 4) << 4) | ((e >> 4) << 6));
      }
    }
  }
}
void dequantize_q6_k(const uint8_t* in, float* y, int64_t n) {
  for (int64_t b = 0; b < n / kQK; ++b, in += 210) {
    const float d = fp16_to_fp32(get_u16(in + 208));
    const uint8_t* ql = in;
    const uint8_t* qh = in + 128;
    const int8_t* sc = reinterpret_cast<const int8_t*>(in + 192);
    for (int half = 0; half < 2; ++half, y += 128, ql += 64, qh += 32, sc += 8) {
      for (int l = 0; l < 32; ++l) {
        const int is = l / 16;
        const int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
        const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
        const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
        const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
        y[l] = d * sc[is] * q1;
        y[l + 32] = d * sc[is + 2] * q2;
        y[l + 64] = d * sc[is + 4] * q3;
        y[l + 96] = d * sc[is + 6] * q4;
      }
    }
  }
}

}  // namespace

uint16_t fp32_to_fp16(float x) { return c10::Half(x).x; }
float fp16_to_fp32(uint16_t h) { return static_cast<float>(c10::Half(h, c10::Half::from_bits())); }

std::string_view ggml_type_name(GgmlType t) {
  switch (t) {
    case GgmlType::kF32: return "F32";
    case GgmlType::kF16: return "F16";
    case GgmlType::kQ5_0: return "Q5_0";
    case GgmlType::kQ5_1: return "Q5_1";
    case GgmlType::kQ8_0: return "Q8_0";
    case GgmlType::kQ4_K: return "Q4_K";
    case GgmlType::kQ5_K: return "Q5_K";
    case GgmlType::kQ6_K: return "Q6_K";
  }
  throw InputError("unknown ggml type " + std::to_string(static_cast<uint32_t>(t)));
}

int64_t block_elements(GgmlType t) {
  switch (t) {
    case GgmlType::kF32:
    case GgmlType::kF16: return 1;
    case GgmlType::kQ5_0:
    case GgmlType::kQ5_1:
    case GgmlType::kQ8_0: return kQ32;
    case GgmlType::kQ4_K:
    case GgmlType::kQ5_K:
    case GgmlType::kQ6_K: return kQK;
  }
  throw InputError("unknown ggml type " + std::to_string(static_cast<uint32_t>(t)));
}

int64_t block_bytes(GgmlType t) {
  switch (t) {
    case GgmlType::kF32: return 4;
    case GgmlType::kF16: return 2;
    case GgmlType::kQ5_0: return 22;
    case GgmlType::kQ5_1: return 24;
    case GgmlType::kQ8_0: return 34;
    case GgmlType::kQ4_K: return 144;
    case GgmlType::kQ5_K: return 176;
    case GgmlType::kQ6_K: return 210;
  }
  throw InputError("unknown ggml type " + std::to_string(static_cast<uint32_t>(t)));
}

uint64_t row_bytes(GgmlType t, int64_t cols) {
  const int64_t be = block_elements(t);
  if (cols <= 0 || cols % be != 0) {
    throw InputError("a " + std::string(ggml_type_name(t)) + " row needs a multiple of " + std::to_string(be) +
                     " elements, got " + std::to_string(cols));
  }
  return static_cast<uint64_t>(cols / be) * static_cast<uint64_t>(block_bytes(t));
}

std::vector<uint8_t> quantize_rows(GgmlType t, const float* x, int64_t rows, int64_t cols) {
  const uint64_t rb = row_bytes(t, cols);
  std::vector<uint8_t> out(rb * static_cast<uint64_t>(rows));
  // Blocks never straddle rows (cols is a multiple of the block) and each block depends on its own
  // elements only, so rows are quantized in parallel chunks with the same bytes as one sequential pass
  // (llama-quantize also splits into row chunks across threads).
  at::parallel_for(0, rows, std::max<int64_t>(1, 65536 / cols), [&](int64_t r0, int64_t r1) {
    const float* xs = x + r0 * cols;
    uint8_t* o = out.data() + static_cast<uint64_t>(r0) * rb;
    const int64_t n = (r1 - r0) * cols;
    switch (t) {
      case GgmlType::kF32: std::memcpy(o, xs, static_cast<size_t>(n) * 4); break;
      case GgmlType::kF16:
        for (int64_t i = 0; i < n; ++i) put_u16(o + 2 * i, fp32_to_fp16(xs[i]));
        break;
      case GgmlType::kQ5_0: quantize_q5_0(xs, o, n); break;
      case GgmlType::kQ5_1: quantize_q5_1(xs, o, n); break;
      case GgmlType::kQ8_0: quantize_q8_0(xs, o, n); break;
      case GgmlType::kQ4_K: quantize_q4_k(xs, o, n); break;
      case GgmlType::kQ5_K: quantize_q5_k(xs, o, n); break;
      case GgmlType::kQ6_K: quantize_q6_k(xs, o, n); break;
    }
  });
  return out;
}

void dequantize_rows(GgmlType t, const uint8_t* data, int64_t rows, int64_t cols, float* out) {
  row_bytes(t, cols);  // validates cols
  const int64_t n = rows * cols;
  switch (t) {
    case GgmlType::kF32: std::memcpy(out, data, static_cast<size_t>(n) * 4); break;
    case GgmlType::kF16:
      for (int64_t i = 0; i < n; ++i) out[i] = fp16_to_fp32(get_u16(data + 2 * i));
      break;
    case GgmlType::kQ5_0: dequantize_q5_0(data, out, n); break;
    case GgmlType::kQ5_1: dequantize_q5_1(data, out, n); break;
    case GgmlType::kQ8_0: dequantize_q8_0(data, out, n); break;
    case GgmlType::kQ4_K: dequantize_q4_k(data, out, n); break;
    case GgmlType::kQ5_K: dequantize_q5_k(data, out, n); break;
    case GgmlType::kQ6_K: dequantize_q6_k(data, out, n); break;
  }
}

}  // namespace qtrain::gguf
