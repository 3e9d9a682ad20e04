// NF4 / FP4 blockwise 4-bit quantization with optional double quantization of the scales, bit-exact with
// bitsandbytes >= 0.50 (CPU backend; formats.md §1). Tensor API with device dispatch (CPU / CUDA).
//
// Layout (bitsandbytes' QuantState, formats.md §1.4-§1.6):
//   packed  uint8 [ceil(n/2)]        two codes per byte, the even flat index in the HIGH nibble; an odd n is
//                                    padded with the code of 0.0. (HF files store it as [ceil(n/2), 1].)
//   absmax  float32 [nblocks]        max|w| per block of `blocksize` consecutive flat elements, or, with
//           uint8   [nblocks]        double quant, its 8-bit code in the signed dynamic map.
//   nested_absmax float32 [ceil(nblocks/256)], nested_offset = mean(absmax), nested_quant_map float32 [256].
// Known, deliberate difference from bitsandbytes' CUDA kernels: an all-zero block packs as 0x77 (NF4) here
// and in bnb's CPU backend, 0x00 in bnb's CUDA kernel; both dequantize to zeros (formats.md §1.3).
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

namespace qtrain::ops {

enum class QuantType : uint8_t { kNF4, kFP4 };

// The blocksizes bitsandbytes 0.50 accepts: powers of two from 32 to 4096. Every check of a blocksize
// (the op, recipes, `qtrain quantize`) uses this one, and says kBlocksizeChoices when it fails.
constexpr bool valid_blocksize(int64_t blocksize) {
  return blocksize >= 32 && blocksize <= 4096 && (blocksize & (blocksize - 1)) == 0;
}
inline constexpr const char* kBlocksizeChoices = "one of 32, 64, 128, 256, 512, 1024, 2048, 4096 (bitsandbytes 0.50)";

struct QuantParams {
  QuantType type = QuantType::kNF4;
  int64_t blocksize = 64;    // one of 32, 64, ..., 4096 (bnb 0.50); HF checkpoints always use 64
  bool double_quant = true;  // bnb compress_statistics / HF bnb_4bit_use_double_quant
};

struct QuantState {
  at::Tensor packed;            // uint8 [ceil(n/2)]
  at::Tensor absmax;            // float32 [nblocks], or uint8 [nblocks] when double-quantized
  at::Tensor nested_absmax;     // float32 [ceil(nblocks/256)]; undefined without double quant
  float nested_offset = 0.0f;   // mean of the fp32 absmax; 0 without double quant
  at::Tensor quant_map;         // float32 [16], the code table (informational: dequant uses the built-in one)
  at::Tensor nested_quant_map;  // float32 [256], signed dynamic map; undefined without double quant
  int64_t blocksize = 64;
  int64_t nested_blocksize = 256;
  QuantType type = QuantType::kNF4;
  std::vector<int64_t> shape;             // original shape, e.g. [N, K]
  at::ScalarType dtype = at::kBFloat16;   // original dtype (bf16 / fp16 / fp32)

  bool double_quant() const { return nested_absmax.defined(); }
  int64_t numel() const;
  int64_t num_blocks() const { return (numel() + blocksize - 1) / blocksize; }
  at::Device device() const { return packed.device(); }
};

// Quantize a contiguous-or-not float tensor (bf16/fp16/fp32, any shape, numel >= 1, all finite) on its device.
QuantState quantize_4bit(const at::Tensor& w, const QuantParams& params = {});

// Dequantize to `out_dtype` (bf16/fp16/fp32) with the original shape, on the state's device.
at::Tensor dequantize_4bit(const QuantState& state, at::ScalarType out_dtype);

// Same, into `out` (contiguous, state.numel() elements of bf16/fp16/fp32, on the state's device): a caller
// that dequantizes repeatedly reuses one buffer instead of page-faulting a fresh one each time (on the CPU a
// fresh 32 MiB output costs ~4x the decode itself: glibc maps and unmaps it per call).
void dequantize_4bit_out(const QuantState& state, at::Tensor& out);

// Pure-libtorch dequantize (tensor ops only, any device): the independent path the kernels are compared with.
at::Tensor dequantize_4bit_fallback(const QuantState& state, at::ScalarType out_dtype);

// The fp32 scales: absmax itself, or the decoded nested absmax (dyn[q] * absmax2 + offset).
at::Tensor dequantize_absmax(const QuantState& state);

// bnb's create_dynamic_map(signed=True): float32 [256] on the CPU, built with the same torch ops (once per
// process: a constant).
at::Tensor signed_dynamic_map();
// The same on `device`, copied there without synchronising the host (pinned memory, non-blocking copy).
at::Tensor signed_dynamic_map(at::Device device);

// The 4-bit code table of `type`: float32 [16] on the CPU; on `device` without a host synchronisation.
at::Tensor code_table(QuantType type);
at::Tensor code_table(QuantType type, at::Device device);

// Throws (TORCH_CHECK) unless every field is consistent with the others; names the field at fault.
void check_quant_state(const QuantState& state);

// ---- raw-pointer back ends (tests compare them bit for bit) ----
namespace nf4_cpu {

// Scalar reference: the specification. x [n] float32; packed [ceil(n/2)]; absmax [nblocks] float32.
void quantize_reference(const float* x, int64_t n, int64_t blocksize, QuantType type, uint8_t* packed,
                        float* absmax);
// Same contract, blocks in parallel with vectorisable inner loops.
void quantize_fast(const float* x, int64_t n, int64_t blocksize, QuantType type, uint8_t* packed,
                   float* absmax);

// The 65536-entry bin -> 8-bit code table for the nested quantizer, built from a 256-entry sorted map.
std::vector<uint8_t> build_nested_lut(const float* dyn_map);
// Nested quantization of scales: d = absmax - offset, blocks of 256. q [nblocks]; absmax2 [ceil(nblocks/256)].
void quantize_nested_reference(const float* absmax, int64_t nblocks, float offset, const uint8_t* lut,
                               uint8_t* q, float* absmax2);

// out [n] of T in {float, c10::BFloat16, c10::Half}; absmax [nblocks] fp32 (already decoded).
template <typename T>
void dequantize_reference(const uint8_t* packed, const float* absmax, int64_t n, int64_t blocksize,
                          QuantType type, T* out);
// The fast path: a 16-entry table per block, expanded with SIMD permutes on the best ISA this CPU has
// (best_cpu_isa()); bit-exact with the reference. nf4_cpu_simd.cpp.
template <typename T>
void dequantize_fast(const uint8_t* packed, const float* absmax, int64_t n, int64_t blocksize, QuantType type,
                     T* out);

// Instruction sets of the fast path. kScalar runs everywhere; the others need the CPU feature (checked at
// run time: an unsupported choice throws). QTRAIN_CPU_ISA=scalar|avx2|avx512 caps best_cpu_isa().
enum class CpuIsa { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };
const char* cpu_isa_name(CpuIsa isa);
bool cpu_isa_supported(CpuIsa isa);
CpuIsa best_cpu_isa();
// dequantize_fast on a named ISA (tests compare every supported one with the reference).
template <typename T>
void dequantize_isa(const uint8_t* packed, const float* absmax, int64_t n, int64_t blocksize, QuantType type,
                    CpuIsa isa, T* out);

// Double-quantized scales decoded: absmax[b] = dyn_map[q[b]] * nested_absmax[b / 256] + offset, two float32
// roundings (equal to dequantize_absmax's tensor ops). q [nblocks] uint8; nested_absmax [ceil(nblocks/256)].
void decode_nested_absmax(const uint8_t* q, int64_t nblocks, const float* nested_absmax, const float* dyn_map,
                          float offset, float* absmax);

}  // namespace nf4_cpu

#if defined(QTRAIN_WITH_CUDA)
namespace nf4_cuda {
// One host synchronisation per call: the fp32 scales come back for the finite check and (double quant) the
// offset, averaged by the CPU's at::mean so CPU and GPU store the same bits; nothing else waits.
QuantState quantize_4bit(const at::Tensor& w, const QuantParams& params);
at::Tensor dequantize_4bit(const QuantState& state, at::ScalarType out_dtype);
// Into `out` (checked by the caller: contiguous, state.numel() elements, bf16/fp16/fp32, on the state's
// device). Vector loads and stores when `out` is 16-byte aligned and `packed` aligned to its chunk; an
// element-wise path, same values, otherwise.
void dequantize_4bit_out(const QuantState& state, at::Tensor& out);
}  // namespace nf4_cuda
#endif

}  // namespace qtrain::ops
