// CPU back ends of NF4/FP4: the scalar reference (the specification, written to be read against formats.md
// §1.3-§1.6) and the fast path (blocks in parallel, branch-free inner loops), tested equal bit for bit.
#include "ops/nf4.h"
#include "ops/nf4_math.h"

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <array>

namespace qtrain::ops::nf4_cpu {
namespace m = nf4_math;

namespace {

bool is_fp4(QuantType t) {
  switch (t) {
    case QuantType::kNF4: return false;
    case QuantType::kFP4: return true;
  }
  TORCH_CHECK(false, "nf4: unknown QuantType value ", static_cast<int>(t), " (expected kNF4 or kFP4)");
}

const float* code_values(QuantType t, const m::CodeTables& tables) {
  return is_fp4(t) ? tables.fp4 : tables.nf4;
}

template <typename T>
T from_float(float v) {
  if constexpr (std::is_same_v<T, float>) {
    return v;
  } else {
    return T(v);  // c10::BFloat16 / c10::Half: round to nearest even, as torch's .to(dtype)
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------------
// Reference.
// ---------------------------------------------------------------------------------------------------

void quantize_reference(const float* x, int64_t n, int64_t blocksize, QuantType type, uint8_t* packed,
                        float* absmax) {
  const bool fp4 = is_fp4(type);
  const m::Thresholds th = m::make_thresholds(fp4);
  const int64_t nblocks = (n + blocksize - 1) / blocksize;
  std::vector<uint8_t> codes(n + 1);  // +1: the pad nibble of an odd n
  for (int64_t b = 0; b < nblocks; ++b) {
    const int64_t begin = b * blocksize;
    const int64_t end = std::min(n, begin + blocksize);
    float am = 0.0f;
    for (int64_t i = begin; i < end; ++i) am = m::absmax_step(am, x[i]);
    const bool full = end - begin == blocksize;
    if (full) {
      // bnb: scaled = x * (1 / absmax.clamp(min=1e-38)); stores the unclamped absmax.
      absmax[b] = am;
      const float inv = 1.0f / m::clamp_absmax(am);
      for (int64_t i = begin; i < end; ++i) codes[i] = m::quantize_scaled(x[i] * inv, th, fp4);
    } else {
      // bnb: the partial last block divides by the clamped absmax and stores it clamped.
      const float am_c = m::clamp_absmax(am);
      absmax[b] = am_c;
      for (int64_t i = begin; i < end; ++i) codes[i] = m::quantize_scaled(x[i] / am_c, th, fp4);
    }
  }
  // bnb pads the scaled vector with one 0.0 before bucketize, so the pad nibble is the code of zero.
  codes[n] = m::quantize_scaled(0.0f, th, fp4);
  for (int64_t j = 0; j < (n + 1) / 2; ++j) {
    packed[j] = static_cast<uint8_t>((codes[2 * j] << 4) | codes[2 * j + 1]);
  }
}

std::vector<uint8_t> build_nested_lut(const float* dyn_map) {
  // [255] float32 midpoints of adjacent map entries; bin i takes the code whose midpoint range holds it.
  std::array<float, 255> mid{};
  for (int i = 0; i < 255; ++i) mid[i] = 0.5f * (dyn_map[i] + dyn_map[i + 1]);
  std::vector<uint8_t> lut(m::kNestedLutSize);
  int code = 0;
  for (int i = 0; i < m::kNestedLutSize; ++i) {
    const float v = m::nested_lut_bin_value(i);
    while (code < 255 && mid[code] < v) ++code;  // strict: a tie stays on the lower code
    lut[i] = static_cast<uint8_t>(code);
  }
  return lut;
}

void quantize_nested_reference(const float* absmax, int64_t nblocks, float offset, const uint8_t* lut,
                               uint8_t* q, float* absmax2) {
  const int64_t bs = m::kNestedBlocksize;
  for (int64_t b = 0; b * bs < nblocks; ++b) {
    const int64_t begin = b * bs;
    const int64_t end = std::min(nblocks, begin + bs);
    float am = 0.0f;
    for (int64_t i = begin; i < end; ++i) am = m::absmax_step(am, absmax[i] - offset);
    absmax2[b] = am;
    if (am == 0.0f) {  // bnb writes code 0 for an all-zero block (whose value dequantizes to the offset)
      for (int64_t i = begin; i < end; ++i) q[i] = 0;
      continue;
    }
    const float inv = 1.0f / am;
    for (int64_t i = begin; i < end; ++i) q[i] = lut[m::nested_lut_index((absmax[i] - offset) * inv)];
  }
}

template <typename T>
void dequantize_reference(const uint8_t* packed, const float* absmax, int64_t n, int64_t blocksize,
                          QuantType type, T* out) {
  const m::CodeTables tables;
  const float* lut = code_values(type, tables);
  for (int64_t i = 0; i < n; ++i) {
    const uint8_t byte = packed[i / 2];
    const int code = (i % 2 == 0) ? (byte >> 4) : (byte & 0x0F);
    out[i] = from_float<T>(m::dequant_value(lut[code], absmax[i / blocksize]));
  }
}

// ---------------------------------------------------------------------------------------------------
// Fast path. Same arithmetic, organised for throughput: one task per range of blocks, and inner loops
// without branches on the data so the compiler vectorises them.
// ---------------------------------------------------------------------------------------------------

void quantize_fast(const float* x, int64_t n, int64_t blocksize, QuantType type, uint8_t* packed,
                   float* absmax) {
  const bool fp4 = is_fp4(type);
  const m::Thresholds th = m::make_thresholds(fp4);
  const int64_t nblocks = (n + blocksize - 1) / blocksize;
  const uint8_t zero_code = m::quantize_scaled(0.0f, th, fp4);
  // Blocks are even-sized, so a block never shares a byte with its neighbour: tasks write disjoint bytes.
  const int64_t grain = std::max<int64_t>(1, 16384 / blocksize);
  at::parallel_for(0, nblocks, grain, [&](int64_t b0, int64_t b1) {
    std::vector<uint8_t> codes(blocksize + 1);
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t begin = b * blocksize;
      const int64_t len = std::min(n - begin, blocksize);
      const float* xb = x + begin;
      float am = 0.0f;
      for (int64_t i = 0; i < len; ++i) am = m::absmax_step(am, xb[i]);
      if (len == blocksize) {
        absmax[b] = am;
        const float inv = 1.0f / m::clamp_absmax(am);
        for (int64_t i = 0; i < len; ++i) codes[i] = m::quantize_scaled(xb[i] * inv, th, fp4);
      } else {
        const float am_c = m::clamp_absmax(am);
        absmax[b] = am_c;
        for (int64_t i = 0; i < len; ++i) codes[i] = m::quantize_scaled(xb[i] / am_c, th, fp4);
      }
      codes[len] = zero_code;  // only read for an odd-length last block
      uint8_t* pb = packed + begin / 2;
      for (int64_t j = 0; j < (len + 1) / 2; ++j) {
        pb[j] = static_cast<uint8_t>((codes[2 * j] << 4) | codes[2 * j + 1]);
      }
    }
  });
}

// dequantize_fast (table per block, vectorised expansion, ISA chosen at run time) is in nf4_cpu_simd.cpp.

#define QTRAIN_NF4_INSTANTIATE(T)                                                                          \
  template void dequantize_reference<T>(const uint8_t*, const float*, int64_t, int64_t, QuantType, T*);
QTRAIN_NF4_INSTANTIATE(float)
QTRAIN_NF4_INSTANTIATE(c10::BFloat16)
QTRAIN_NF4_INSTANTIATE(c10::Half)
#undef QTRAIN_NF4_INSTANTIATE

}  // namespace qtrain::ops::nf4_cpu
