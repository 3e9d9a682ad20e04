// Vectorised NF4/FP4 dequantize for x86-64 (AVX-512BW, AVX2), chosen at run time by the CPU's features, with
// the scalar table path (nf4_cpu.cpp) as the fallback everywhere else. Bit-exact with dequantize_reference:
//
//   out[i] = T(code_value[code(i)] * absmax[block(i)])     one float32 product, one cast (nf4_math.h)
//
// A block has one scale, so its 16 possible outputs form a table. Per block we compute that table with one
// vector multiply (IEEE float32, rounded once per lane exactly like the scalar mul_rn; no FMA is ever used
// here) and one vector cast (bfloat16: the integer round-to-nearest-even c10::BFloat16 uses; float16: the
// hardware's IEEE RNE conversion, which equals c10::Half's for every finite input). Blocks whose scale is NaN
// or inf take the shared scalar table instead (their NaN payloads follow c10's canonical choice there).
// The block's codes are then expanded with a register permute: 16 table entries are one register.
//
// Why function-level target attributes instead of -mavx2 on the file: the library must run on any
// x86-64 machine, so only these functions use the wider ISA and they are called only when the CPU has it.
#include "ops/nf4.h"
#include "ops/nf4_math.h"

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define QTRAIN_NF4_X86 1
#include <immintrin.h>
// GCC 12's AVX-512 headers build some results from _mm256_undefined_si256() (cvtepi32_epi16, cvtps_ph,
// castsi256_si512) and then warn that it "may be used uninitialized" where inlined: a false positive.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#endif

namespace qtrain::ops::nf4_cpu {
namespace m = nf4_math;

namespace {

const float* code_values(QuantType t, const m::CodeTables& tables) {
  return t == QuantType::kFP4 ? tables.fp4 : tables.nf4;
}

// The 16 outputs of a block in T, computed by the shared scalar math: the reference's own expression.
template <typename T>
void scalar_table(const float* lut, float absmax, T* table) {
  for (int c = 0; c < 16; ++c) {
    const float v = m::dequant_value(lut[c], absmax);
    if constexpr (std::is_same_v<T, float>) {
      table[c] = v;
    } else {
      table[c] = T(v);
    }
  }
}

// Elements [begin, begin + len) of the flat tensor from their table; begin is even (blocks are even-sized),
// so element begin is the high nibble of packed[begin / 2].
template <typename T>
void expand_scalar(const uint8_t* pb, const T* table, int64_t len, T* ob) {
  const int64_t pairs = len / 2;
  for (int64_t j = 0; j < pairs; ++j) {
    ob[2 * j] = table[pb[j] >> 4];
    ob[2 * j + 1] = table[pb[j] & 0x0F];
  }
  if (len % 2 != 0) ob[len - 1] = table[pb[pairs] >> 4];
}

#if defined(QTRAIN_NF4_X86)

#define QTRAIN_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx2,f16c")))
#define QTRAIN_TARGET_AVX2 __attribute__((target("avx2,f16c")))

// ---- AVX-512 ----

// 16 codes in flat order from 8 packed bytes: [hi0, lo0, hi1, lo1, ...] (the even index is the high nibble).
QTRAIN_TARGET_AVX512 inline __m128i codes16_avx512(const uint8_t* p) {
  const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
  const __m128i mask = _mm_set1_epi8(0x0F);
  const __m128i hi = _mm_and_si128(_mm_srli_epi16(b, 4), mask);
  const __m128i lo = _mm_and_si128(b, mask);
  return _mm_unpacklo_epi8(hi, lo);
}

// 32 codes in flat order from 16 packed bytes, as 16-bit lanes.
QTRAIN_TARGET_AVX512 inline __m512i codes32_epi16_avx512(const uint8_t* p) {
  const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  const __m128i mask = _mm_set1_epi8(0x0F);
  const __m128i hi = _mm_and_si128(_mm_srli_epi16(b, 4), mask);
  const __m128i lo = _mm_and_si128(b, mask);
  const __m256i codes = _mm256_set_m128i(_mm_unpackhi_epi8(hi, lo), _mm_unpacklo_epi8(hi, lo));
  return _mm512_cvtepu8_epi16(codes);
}

// float32 [16] products -> bfloat16 bits [16] (in the low 16 bits of each 32-bit lane's narrowing), c10's
// round_to_nearest_even for non-NaN inputs: (u + 0x7FFF + ((u >> 16) & 1)) >> 16.
QTRAIN_TARGET_AVX512 inline __m256i bf16_rne_avx512(__m512 v) {
  const __m512i u = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  const __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF))), 16);
  return _mm512_cvtepi32_epi16(r);
}

QTRAIN_TARGET_AVX512 void dequant_range_avx512_f32(const uint8_t* packed, const float* absmax, int64_t n,
                                                   int64_t blocksize, const float* lut, int64_t b0, int64_t b1,
                                                   float* out) {
  const __m512 codes_v = _mm512_loadu_ps(lut);
  alignas(64) float tab[16];
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t begin = b * blocksize;
    const int64_t len = std::min(n - begin, blocksize);
    const uint8_t* pb = packed + begin / 2;
    float* ob = out + begin;
    // NaN/inf scales reach the same products here; float32 output needs no cast, so no special case.
    const __m512 table = _mm512_mul_ps(codes_v, _mm512_set1_ps(absmax[b]));
    const int64_t vec = len / 16 * 16;
    for (int64_t i = 0; i < vec; i += 16) {
      const __m512i idx = _mm512_cvtepu8_epi32(codes16_avx512(pb + i / 2));
      _mm512_storeu_ps(ob + i, _mm512_permutexvar_ps(idx, table));
    }
    if (vec < len) {
      _mm512_store_ps(tab, table);
      expand_scalar(pb + vec / 2, tab, len - vec, ob + vec);
    }
  }
}

template <typename T>
QTRAIN_TARGET_AVX512 void dequant_range_avx512_16(const uint8_t* packed, const float* absmax, int64_t n,
                                                  int64_t blocksize, const float* lut, int64_t b0, int64_t b1,
                                                  T* out) {
  static_assert(sizeof(T) == 2);
  const __m512 codes_v = _mm512_loadu_ps(lut);
  alignas(64) T tab[32];
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t begin = b * blocksize;
    const int64_t len = std::min(n - begin, blocksize);
    const uint8_t* pb = packed + begin / 2;
    T* ob = out + begin;
    const float a = absmax[b];
    __m256i t16;
    if (std::isfinite(a)) {
      const __m512 prod = _mm512_mul_ps(codes_v, _mm512_set1_ps(a));
      if constexpr (std::is_same_v<T, c10::BFloat16>) {
        t16 = bf16_rne_avx512(prod);  // finite products: no NaN to canonicalise
      } else {
        t16 = _mm512_cvtps_ph(prod, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      }
    } else {
      scalar_table(lut, a, tab);
      t16 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(tab));
    }
    // permutexvar_epi16 reads indices 0..15 only, so the upper half of the register is never looked at.
    const __m512i table = _mm512_castsi256_si512(t16);
    const int64_t vec = len / 32 * 32;
    for (int64_t i = 0; i < vec; i += 32) {
      const __m512i idx = codes32_epi16_avx512(pb + i / 2);
      _mm512_storeu_si512(reinterpret_cast<void*>(ob + i), _mm512_permutexvar_epi16(idx, table));
    }
    if (vec < len) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(tab), t16);
      expand_scalar(pb + vec / 2, tab, len - vec, ob + vec);
    }
  }
}

// ---- AVX2 ----

// 8 codes (flat order) from 4 packed bytes, as 32-bit lanes.
QTRAIN_TARGET_AVX2 inline __m256i codes8_epi32_avx2(const uint8_t* p) {
  int32_t word;
  std::memcpy(&word, p, 4);
  const __m128i b = _mm_cvtsi32_si128(word);
  const __m128i mask = _mm_set1_epi8(0x0F);
  const __m128i hi = _mm_and_si128(_mm_srli_epi16(b, 4), mask);
  const __m128i lo = _mm_and_si128(b, mask);
  return _mm256_cvtepu8_epi32(_mm_unpacklo_epi8(hi, lo));
}

QTRAIN_TARGET_AVX2 void dequant_range_avx2_f32(const uint8_t* packed, const float* absmax, int64_t n,
                                               int64_t blocksize, const float* lut, int64_t b0, int64_t b1,
                                               float* out) {
  const __m256 c_lo = _mm256_loadu_ps(lut), c_hi = _mm256_loadu_ps(lut + 8);
  alignas(32) float tab[16];
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t begin = b * blocksize;
    const int64_t len = std::min(n - begin, blocksize);
    const uint8_t* pb = packed + begin / 2;
    float* ob = out + begin;
    const __m256 s = _mm256_set1_ps(absmax[b]);
    const __m256 t_lo = _mm256_mul_ps(c_lo, s), t_hi = _mm256_mul_ps(c_hi, s);  // codes 0-7, 8-15
    const int64_t vec = len / 8 * 8;
    for (int64_t i = 0; i < vec; i += 8) {
      const __m256i idx = codes8_epi32_avx2(pb + i / 2);
      // Two 8-entry permutes (they use the index's low 3 bits), chosen by bit 3 moved into the sign bit.
      const __m256 from_lo = _mm256_permutevar8x32_ps(t_lo, idx);
      const __m256 from_hi = _mm256_permutevar8x32_ps(t_hi, idx);
      const __m256 sel = _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28));
      _mm256_storeu_ps(ob + i, _mm256_blendv_ps(from_lo, from_hi, sel));
    }
    if (vec < len) {
      _mm256_store_ps(tab, t_lo);
      _mm256_store_ps(tab + 8, t_hi);
      expand_scalar(pb + vec / 2, tab, len - vec, ob + vec);
    }
  }
}

// 16-bit outputs: the table's low and high bytes are two 16-byte shuffle tables (pshufb), looked up by the
// same codes and interleaved back into 16-bit values.
template <typename T>
QTRAIN_TARGET_AVX2 void dequant_range_avx2_16(const uint8_t* packed, const float* absmax, int64_t n,
                                              int64_t blocksize, const float* lut, int64_t b0, int64_t b1, T* out) {
  static_assert(sizeof(T) == 2);
  alignas(32) T tab[16];
  const __m128i mask = _mm_set1_epi8(0x0F);
  const __m128i split = _mm_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t begin = b * blocksize;
    const int64_t len = std::min(n - begin, blocksize);
    const uint8_t* pb = packed + begin / 2;
    T* ob = out + begin;
    scalar_table(lut, absmax[b], tab);  // the shared scalar casts; the expansion below is what is vectorised
    // [16 x 16-bit] -> low bytes [16], high bytes [16]
    const __m128i t0 = _mm_shuffle_epi8(_mm_load_si128(reinterpret_cast<const __m128i*>(tab)), split);
    const __m128i t1 = _mm_shuffle_epi8(_mm_load_si128(reinterpret_cast<const __m128i*>(tab + 8)), split);
    const __m256i tlo = _mm256_broadcastsi128_si256(_mm_unpacklo_epi64(t0, t1));
    const __m256i thi = _mm256_broadcastsi128_si256(_mm_unpackhi_epi64(t0, t1));
    const int64_t vec = len / 32 * 32;
    for (int64_t i = 0; i < vec; i += 32) {
      const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(pb + i / 2));
      const __m128i hi = _mm_and_si128(_mm_srli_epi16(bytes, 4), mask);
      const __m128i lo = _mm_and_si128(bytes, mask);
      // lane 0: codes 0-15, lane 1: codes 16-31
      const __m256i codes = _mm256_set_m128i(_mm_unpackhi_epi8(hi, lo), _mm_unpacklo_epi8(hi, lo));
      const __m256i vlo = _mm256_shuffle_epi8(tlo, codes), vhi = _mm256_shuffle_epi8(thi, codes);
      const __m256i a = _mm256_unpacklo_epi8(vlo, vhi);  // lane 0: outputs 0-7, lane 1: 16-23
      const __m256i c = _mm256_unpackhi_epi8(vlo, vhi);  // lane 0: outputs 8-15, lane 1: 24-31
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(ob + i), _mm256_permute2x128_si256(a, c, 0x20));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(ob + i + 16), _mm256_permute2x128_si256(a, c, 0x31));
    }
    if (vec < len) expand_scalar(pb + vec / 2, tab, len - vec, ob + vec);
  }
}

#endif  // QTRAIN_NF4_X86

template <typename T>
void dequant_range_scalar(const uint8_t* packed, const float* absmax, int64_t n, int64_t blocksize,
                          const float* lut, int64_t b0, int64_t b1, T* out) {
  std::array<T, 16> tab{};
  for (int64_t b = b0; b < b1; ++b) {
    scalar_table(lut, absmax[b], tab.data());
    const int64_t begin = b * blocksize;
    expand_scalar(packed + begin / 2, tab.data(), std::min(n - begin, blocksize), out + begin);
  }
}

bool hardware_has(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kScalar: return true;
#if defined(QTRAIN_NF4_X86)
    case CpuIsa::kAvx2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
    case CpuIsa::kAvx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
#else
    case CpuIsa::kAvx2:
    case CpuIsa::kAvx512: return false;
#endif
  }
  return false;
}

// QTRAIN_CPU_ISA=scalar|avx2|avx512 caps the choice (to measure or rule out a path); never raises it.
CpuIsa detect_best() {
  CpuIsa best = CpuIsa::kScalar;
  if (hardware_has(CpuIsa::kAvx2)) best = CpuIsa::kAvx2;
  if (hardware_has(CpuIsa::kAvx512)) best = CpuIsa::kAvx512;
  if (const char* cap = std::getenv("QTRAIN_CPU_ISA")) {
    const std::string c = cap;
    const CpuIsa want = c == "scalar" ? CpuIsa::kScalar : c == "avx2" ? CpuIsa::kAvx2 : CpuIsa::kAvx512;
    if (static_cast<int>(want) < static_cast<int>(best)) best = want;
  }
  return best;
}

}  // namespace

const char* cpu_isa_name(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kScalar: return "scalar";
    case CpuIsa::kAvx2: return "avx2";
    case CpuIsa::kAvx512: return "avx512";
  }
  return "?";
}

bool cpu_isa_supported(CpuIsa isa) { return hardware_has(isa); }

CpuIsa best_cpu_isa() {
  static const CpuIsa best = detect_best();
  return best;
}

template <typename T>
void dequantize_isa(const uint8_t* packed, const float* absmax, int64_t n, int64_t blocksize, QuantType type,
                    CpuIsa isa, T* out) {
  TORCH_CHECK(cpu_isa_supported(isa), "nf4 dequantize: this CPU lacks ", cpu_isa_name(isa));
  const m::CodeTables tables;
  const float* lut = code_values(type, tables);
  const int64_t nblocks = (n + blocksize - 1) / blocksize;
  // ~32K elements per task: large enough to amortise a task, small enough to balance two threads.
  const int64_t grain = std::max<int64_t>(1, 32768 / blocksize);
  at::parallel_for(0, nblocks, grain, [&](int64_t b0, int64_t b1) {
#if defined(QTRAIN_NF4_X86)
    if (isa == CpuIsa::kAvx512) {
      if constexpr (std::is_same_v<T, float>) {
        dequant_range_avx512_f32(packed, absmax, n, blocksize, lut, b0, b1, out);
      } else {
        dequant_range_avx512_16<T>(packed, absmax, n, blocksize, lut, b0, b1, out);
      }
      return;
    }
    if (isa == CpuIsa::kAvx2) {
      if constexpr (std::is_same_v<T, float>) {
        dequant_range_avx2_f32(packed, absmax, n, blocksize, lut, b0, b1, out);
      } else {
        dequant_range_avx2_16<T>(packed, absmax, n, blocksize, lut, b0, b1, out);
      }
      return;
    }
#endif
    dequant_range_scalar(packed, absmax, n, blocksize, lut, b0, b1, out);
  });
}

template <typename T>
void dequantize_fast(const uint8_t* packed, const float* absmax, int64_t n, int64_t blocksize, QuantType type,
                     T* out) {
  dequantize_isa(packed, absmax, n, blocksize, type, best_cpu_isa(), out);
}

#define QTRAIN_NF4_SIMD_INSTANTIATE(T)                                                                       \
  template void dequantize_isa<T>(const uint8_t*, const float*, int64_t, int64_t, QuantType, CpuIsa, T*); \
  template void dequantize_fast<T>(const uint8_t*, const float*, int64_t, int64_t, QuantType, T*);
QTRAIN_NF4_SIMD_INSTANTIATE(float)
QTRAIN_NF4_SIMD_INSTANTIATE(c10::BFloat16)
QTRAIN_NF4_SIMD_INSTANTIATE(c10::Half)
#undef QTRAIN_NF4_SIMD_INSTANTIATE

void decode_nested_absmax(const uint8_t* q, int64_t nblocks, const float* nested_absmax, const float* dyn_map,
                          float offset, float* absmax) {
  // Baseline x86-64 code (no FMA target here): dyn[q] * absmax2 then + offset, two roundings as bnb.
  at::parallel_for(0, nblocks, 16384, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      absmax[b] = m::decode_nested_absmax(dyn_map[q[b]], nested_absmax[b / m::kNestedBlocksize], offset);
    }
  });
}

}  // namespace qtrain::ops::nf4_cpu
