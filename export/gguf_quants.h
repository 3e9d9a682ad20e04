// ggml's block quantization formats that a GGUF export writes (formats as in llama.cpp's ggml-common.h),
// with quantizers bit-exact with ggml-quants.c's reference ("_ref") quantizers, the ones llama-quantize
// runs when no importance matrix is given, and with convert_hf_to_gguf.py's numpy Q8_0:
//
//   type  elements/block  bytes/block  layout
//   F32   1               4
//   F16   1               2            IEEE half, round to nearest even
//   Q8_0  32              34           d f16 · qs int8[32]                       x = d·q
//   Q5_0  32              22           d f16 · qh u32 (bit 4 of each q) · qs[16]  x = d·(q − 16)
//   Q5_1  32              24           d f16 · m f16 · qh u32 · qs[16]           x = d·q + m
//   Q4_K  256             144          d f16 · dmin f16 · scales[12] (8 × 6-bit scale + 6-bit min) · qs[128]
//                                      x = d·sc_j·q − dmin·m_j, eight 32-element sub-blocks j
//   Q5_K  256             176          as Q4_K plus qh[32] (the fifth bit)
//   Q6_K  256             210          ql[128] · qh[64] · scales int8[16] · d f16   x = d·sc_j·(q − 32), 16 × 16
//
// Bit-exactness means the same float32 operations in the same order as the C reference: no FMA
// contraction (this file's .cpp turns it off; an x86-64 build without -march has no FMA anyway), the
// reference's magic-number round-half-to-even (nearest_int) where it uses it, roundf (half away from zero)
// for Q8_0, truncation for Q5_0/Q5_1. A llama.cpp built with -march=native on an FMA machine may contract
// a few of the reference's float expressions and so differ from itself built without; our bytes are those
// of the uncontracted reference (and of gguf-py's numpy quantizers, which cannot contract).
//
// All functions work on rows: `cols` must be a multiple of the type's block size (InputError otherwise).
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

namespace qtrain::gguf {

// ggml_type values as stored in a GGUF tensor info.
enum class GgmlType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ5_0 = 6,
  kQ5_1 = 7,
  kQ8_0 = 8,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
};

std::string_view ggml_type_name(GgmlType t);  // "Q4_K", as ggml_type_name
int64_t block_elements(GgmlType t);           // 1, 32 or 256
int64_t block_bytes(GgmlType t);
// Bytes of one row of `cols` elements. Throws InputError unless cols is a multiple of the block size.
uint64_t row_bytes(GgmlType t, int64_t cols);

// x [rows, cols] row-major float32 → rows × row_bytes(t, cols) bytes.
std::vector<uint8_t> quantize_rows(GgmlType t, const float* x, int64_t rows, int64_t cols);
// The inverse (ggml's dequantize_row_*): data of rows × row_bytes(t, cols) bytes → out [rows, cols].
void dequantize_rows(GgmlType t, const uint8_t* data, int64_t rows, int64_t cols, float* out);

// IEEE half conversions, round to nearest even (ggml's GGML_FP32_TO_FP16 on x86 with F16C or without).
uint16_t fp32_to_fp16(float x);
float fp16_to_fp32(uint16_t h);

}  // namespace qtrain::gguf
