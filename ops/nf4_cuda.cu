// CUDA back end of NF4/FP4: kernels on raw pointers, launchers taking a cudaStream_t, then the tensor glue with
// every check. The per-element math is ops/nf4_math.h, shared with the CPU reference.
#include "ops/cuda_check.h"
#include "ops/cuda_dtype.cuh"
#include "ops/nf4.h"
#include "ops/nf4_math.h"

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

namespace qtrain::ops::nf4_cuda {
namespace m = nf4_math;

namespace {

// ---------------------------------------------------------------------------------------------------
// Kernels (no torch below this line until the glue section).
// ---------------------------------------------------------------------------------------------------

using cuda_dtype::from_float;
using cuda_dtype::to_float;

// NaN-propagating block max of per-thread partials. blockDim.x is a power of two <= 256.
__device__ float block_absmax(float am, float* smem) {
  smem[threadIdx.x] = am;
  __syncthreads();
  for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) smem[threadIdx.x] = m::absmax_step(smem[threadIdx.x], smem[threadIdx.x + s]);
    __syncthreads();
  }
  const float r = smem[0];
  __syncthreads();
  return r;
}

// One CUDA block per quantization block. x [n]; packed [ceil(n/2)]; absmax [nblocks].
template <typename T>
__global__ void quantize_4bit_kernel(const T* __restrict__ x, int64_t n, int blocksize, bool fp4,
                                     uint8_t* __restrict__ packed, float* __restrict__ absmax) {
  __shared__ float smem[256];
  const int64_t begin = static_cast<int64_t>(blockIdx.x) * blocksize;
  const int64_t len = min(static_cast<int64_t>(blocksize), n - begin);
  float am = 0.0f;
  for (int64_t i = threadIdx.x; i < len; i += blockDim.x) am = m::absmax_step(am, to_float(x[begin + i]));
  am = block_absmax(am, smem);
  const bool full = len == blocksize;
  const float stored = full ? am : m::clamp_absmax(am);
  const float inv = 1.0f / m::clamp_absmax(am);  // IEEE division: nvcc keeps 1.0f/x exact without fast-math
  if (threadIdx.x == 0) absmax[blockIdx.x] = stored;
  const m::Thresholds th = m::make_thresholds(fp4);
  const uint8_t zero_code = m::quantize_scaled(0.0f, th, fp4);
  for (int64_t j = threadIdx.x; j < (len + 1) / 2; j += blockDim.x) {
    uint8_t c[2];
#pragma unroll
    for (int k = 0; k < 2; ++k) {
      const int64_t i = 2 * j + k;
      if (i < len) {
        const float v = to_float(x[begin + i]);
        c[k] = m::quantize_scaled(full ? m::mul_rn(v, inv) : m::div_rn(v, stored), th, fp4);
      } else {
        c[k] = zero_code;  // odd n: bnb pads the scaled vector with 0.0
      }
    }
    packed[begin / 2 + j] = static_cast<uint8_t>((c[0] << 4) | c[1]);
  }
}

// One CUDA block (256 threads) per nested block of 256 scales. absmax [nblocks]; dyn_map [256] (sorted);
// q [nblocks]; absmax2 [ceil(nblocks/256)]. The 8-bit code of a scale is nested_code_of_bin over the map's
// 255 midpoints, staged in shared memory here (256 scales per block, so the staging is amortised) instead
// of the 65536-entry table the CPU path builds: same codes (tests/ops/nf4_test.cpp checks every bin).
__global__ void quantize_nested_kernel(const float* __restrict__ absmax, int64_t nblocks, float offset,
                                       const float* __restrict__ dyn_map, uint8_t* __restrict__ q,
                                       float* __restrict__ absmax2) {
  __shared__ float smem[256];
  __shared__ float mid[255];
  if (threadIdx.x < 255) mid[threadIdx.x] = m::nested_midpoint(dyn_map[threadIdx.x], dyn_map[threadIdx.x + 1]);
  const int64_t i = static_cast<int64_t>(blockIdx.x) * m::kNestedBlocksize + threadIdx.x;
  const float d = i < nblocks ? m::add_rn(absmax[i], -offset) : 0.0f;
  const float am = block_absmax(m::absmax_step(0.0f, d), smem);  // its __syncthreads also publishes `mid`
  if (threadIdx.x == 0) absmax2[blockIdx.x] = am;
  if (i >= nblocks) return;
  const float inv = 1.0f / am;  // IEEE division (no fast-math), as the CPU's 1.0f / am
  q[i] = am == 0.0f ? uint8_t{0} : static_cast<uint8_t>(m::nested_code_of_bin(m::nested_lut_index(m::mul_rn(d, inv)), mid));
}

// ---- dequantize ----
// Work unit: one 16-byte chunk of output = kElems outputs (8 bf16/fp16, 4 fp32) = kElems / 2 packed bytes,
// loaded as one 32-bit (bf16/fp16) or 16-bit (fp32) word. Consecutive lanes of a warp take consecutive
// chunks, so each store instruction of a warp writes 512 contiguous bytes and each load reads 128 (64 for
// fp32) contiguous bytes: both fully coalesced. blocksize is a power of two >= 32 and a chunk starts at a
// multiple of kElems <= 8, so the outputs of a chunk share one scale, decoded from the scale arrays per
// chunk (nested absmax included; the few distinct addresses of a warp hit L1) rather than staged anywhere.
// The 16-entry code table lives in registers, one entry per lane (lane & 15), and is read with a warp
// shuffle: no shared memory, no __syncthreads, no bank or constant-cache serialisation on divergent codes.
// Each lane handles kUnroll chunks, 32 apart, with all loads issued before the first store.

constexpr int kDequantThreads = 256;
constexpr int kUnroll = 4;

struct DequantArgs {
  const uint8_t* packed;       // [ceil(n/2)]
  const float* absmax_f32;     // [nblocks], or nullptr when double-quantized
  const uint8_t* absmax_q;     // [nblocks], or nullptr
  const float* nested_absmax;  // [ceil(nblocks/256)], or nullptr
  const float* nested_map;     // [256], or nullptr
  float offset;
  int64_t n;
  int block_shift;             // log2(blocksize)
  float code[16];              // the 4-bit code table (nf4_math::CodeTables), passed in the kernel's parameters
};

__device__ __forceinline__ float chunk_scale(const float* absmax_f32, const uint8_t* absmax_q,
                                             const float* nested_absmax, const float* nested_map, float offset,
                                             int64_t block) {
  if (absmax_q == nullptr) return __ldg(absmax_f32 + block);
  return m::decode_nested_absmax(__ldg(nested_map + __ldg(absmax_q + block)), __ldg(nested_absmax + (block >> 8)),
                                 offset);  // 256 scales per nested one
}

// The arguments are __grid_constant__: read in place from the parameter bank (a.code indexed per lane)
// instead of the copy to local memory nvcc otherwise makes of a kernel parameter whose address is taken.
// kVector: `packed` is aligned to a chunk's packed bytes and `out` to 16 bytes, so whole chunks move as one
// word in and one uint4 out; otherwise (a view at an odd offset) bytes in and elements out, same values.
template <typename T, bool kVector>
__global__ void __launch_bounds__(kDequantThreads) dequantize_4bit_kernel(const __grid_constant__ DequantArgs a, T* __restrict__ out) {
  constexpr int kElems = 16 / static_cast<int>(sizeof(T));  // outputs per chunk
  constexpr int kBytes = kElems / 2;                        // packed bytes per chunk
  using Word = typename std::conditional<kBytes == 4, uint32_t, uint16_t>::type;
  const int lane = static_cast<int>(threadIdx.x) & 31;
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * kDequantThreads + threadIdx.x) >> 5;
  const int64_t first_chunk = warp * (32 * kUnroll);  // warp-uniform
  const int64_t chunks = (a.n + kElems - 1) / kElems;  // the last one may be partial
  if (first_chunk >= chunks) return;                   // whole warps only: the shuffles below need all 32 lanes
  const float my_code = a.code[lane & 15];  // this lane's entry of the table, for the shuffles below
  const int64_t packed_bytes = (a.n + 1) / 2;

  uint32_t word[kUnroll];
  float scale[kUnroll];
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    const int64_t c = first_chunk + u * 32 + lane;
    word[u] = 0;
    scale[u] = 0.0f;
    if (c >= chunks) continue;
    const int64_t byte0 = c * kBytes;
    if (kVector && (c + 1) * kElems <= a.n) {
      word[u] = __ldg(reinterpret_cast<const Word*>(a.packed + byte0));
    } else {
#pragma unroll
      for (int j = 0; j < kBytes; ++j) {
        if (byte0 + j < packed_bytes) word[u] |= static_cast<uint32_t>(__ldg(a.packed + byte0 + j)) << (8 * j);
      }
    }
    scale[u] = chunk_scale(a.absmax_f32, a.absmax_q, a.nested_absmax, a.nested_map, a.offset,
                           (c * kElems) >> a.block_shift);
  }

#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    const int64_t c = first_chunk + u * 32 + lane;
    T vals[kElems];  // constant indices only (fully unrolled): registers
#pragma unroll
    for (int j = 0; j < kBytes; ++j) {
      // Byte j of the chunk (little-endian word) holds outputs 2j (high nibble) and 2j+1 (low nibble).
      const int byte = static_cast<int>((word[u] >> (8 * j)) & 0xFFu);
      const float hi = __shfl_sync(0xFFFFFFFFu, my_code, byte >> 4);  // every lane takes part, in range or not
      const float lo = __shfl_sync(0xFFFFFFFFu, my_code, byte & 0x0F);
      vals[2 * j] = from_float<T>(m::dequant_value(hi, scale[u]));
      vals[2 * j + 1] = from_float<T>(m::dequant_value(lo, scale[u]));
    }
    if (c >= chunks) continue;
    const int64_t e0 = c * kElems;
    if (kVector && e0 + kElems <= a.n) {
      uint32_t w[4];  // the 16 bytes of the chunk, built in registers
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        if constexpr (kElems == 8) {
          w[k] = cuda_dtype::bits_of(vals[2 * k]) | (cuda_dtype::bits_of(vals[2 * k + 1]) << 16);
        } else {
          w[k] = cuda_dtype::bits_of(vals[k]);
        }
      }
      *reinterpret_cast<uint4*>(out + e0) = make_uint4(w[0], w[1], w[2], w[3]);
    } else {
#pragma unroll
      for (int j = 0; j < kElems; ++j) {
        if (e0 + j < a.n) out[e0 + j] = vals[j];
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// Launchers.
// ---------------------------------------------------------------------------------------------------

template <typename T>
void launch_quantize_4bit(const T* x, int64_t n, int blocksize, bool fp4, uint8_t* packed, float* absmax,
                          cudaStream_t stream) {
  const int64_t nblocks = (n + blocksize - 1) / blocksize;
  const int threads = blocksize / 2 < 256 ? blocksize / 2 : 256;  // power of two in [16, 256]
  quantize_4bit_kernel<T><<<static_cast<unsigned>(nblocks), threads, 0, stream>>>(x, n, blocksize, fp4, packed,
                                                                                  absmax);
}

void launch_quantize_nested(const float* absmax, int64_t nblocks, float offset, const float* dyn_map, uint8_t* q,
                            float* absmax2, cudaStream_t stream) {
  const int64_t grid = (nblocks + m::kNestedBlocksize - 1) / m::kNestedBlocksize;
  quantize_nested_kernel<<<static_cast<unsigned>(grid), m::kNestedBlocksize, 0, stream>>>(absmax, nblocks, offset,
                                                                                          dyn_map, q, absmax2);
}

template <typename T>
void launch_dequantize_4bit(const DequantArgs& a, bool vector_io, T* out, cudaStream_t stream) {
  constexpr int64_t kElems = 16 / sizeof(T);
  const int64_t chunks = (a.n + kElems - 1) / kElems;
  const int64_t warps = (chunks + 32 * kUnroll - 1) / (32 * kUnroll);
  const int64_t grid = (warps * 32 + kDequantThreads - 1) / kDequantThreads;
  TORCH_CHECK(grid < (int64_t{1} << 31), "dequantize_4bit: ", a.n, " elements need ", grid,
              " CUDA blocks, more than the 2^31 - 1 a launch allows");
  if (vector_io) {
    dequantize_4bit_kernel<T, true><<<static_cast<unsigned>(grid), kDequantThreads, 0, stream>>>(a, out);
  } else {
    dequantize_4bit_kernel<T, false><<<static_cast<unsigned>(grid), kDequantThreads, 0, stream>>>(a, out);
  }
}

// ---------------------------------------------------------------------------------------------------
// Tensor glue.
// ---------------------------------------------------------------------------------------------------


bool aligned_to(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

int log2_of(int64_t power_of_two) {
  int k = 0;
  while ((int64_t{1} << k) < power_of_two) ++k;
  return k;
}

}  // namespace

QuantState quantize_4bit(const at::Tensor& w, const QuantParams& p) {
  TORCH_CHECK(w.is_cuda(), "nf4_cuda::quantize_4bit: tensor w must be on a CUDA device, found ", w.device());
  const c10::cuda::CUDAGuard guard(w.device());
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const at::Tensor x = w.contiguous().reshape({-1});  // [n], kept in its own dtype: the kernel widens it
  const int64_t n = x.numel();
  const int64_t nb = (n + p.blocksize - 1) / p.blocksize;
  TORCH_CHECK(nb < (int64_t{1} << 31), "quantize_4bit: tensor w has ", n, " elements, more than 2^31 blocks of ",
              p.blocksize);
  const bool fp4 = p.type == QuantType::kFP4;
  QuantState s;
  s.blocksize = p.blocksize;
  s.type = p.type;
  s.shape = w.sizes().vec();
  s.dtype = w.scalar_type();
  s.quant_map = code_table(p.type, w.device());  // pinned + non-blocking: no wait on the stream
  s.packed = at::empty({(n + 1) / 2}, w.options().dtype(at::kByte));
  at::Tensor absmax = at::empty({nb}, w.options().dtype(at::kFloat));
  const int bs = static_cast<int>(p.blocksize);
  switch (w.scalar_type()) {
    case at::kFloat:
      launch_quantize_4bit(x.data_ptr<float>(), n, bs, fp4, s.packed.data_ptr<uint8_t>(), absmax.data_ptr<float>(),
                           stream);
      break;
    case at::kBFloat16:
      launch_quantize_4bit(reinterpret_cast<const __nv_bfloat16*>(x.data_ptr<at::BFloat16>()), n, bs, fp4,
                           s.packed.data_ptr<uint8_t>(), absmax.data_ptr<float>(), stream);
      break;
    case at::kHalf:
      launch_quantize_4bit(reinterpret_cast<const __half*>(x.data_ptr<at::Half>()), n, bs, fp4,
                           s.packed.data_ptr<uint8_t>(), absmax.data_ptr<float>(), stream);
      break;
    default:
      TORCH_CHECK(false, "quantize_4bit: tensor w must be float32, bfloat16 or float16, found ", w.scalar_type());
  }
  check_launch("quantize_4bit");
  // The one synchronisation of a quantize call: the fp32 scales (n / blocksize floats) come to the host,
  // where a NaN/inf weight is rejected with its block and, with double quant, averaged by the very at::mean
  // on the CPU that bitsandbytes' CPU backend uses, so the GPU and CPU paths store the same offset bits.
  // QuantState keeps that offset as a host float (checkpoint writers and the QLoRA op read it), so some
  // read-back is unavoidable; everything else here (tables, nested quantization) stays on the stream.
  const at::Tensor absmax_cpu = absmax.cpu();
  const at::Tensor bad = at::logical_not(at::isfinite(absmax_cpu));
  if (bad.any().item<bool>()) {
    const int64_t block = bad.nonzero().min().item<int64_t>();
    TORCH_CHECK(false, "quantize_4bit: tensor w must be finite, found NaN or inf in block ", block,
                " (elements from ", block, " * blocksize)");
  }
  if (!p.double_quant) {
    s.absmax = absmax;
    return s;
  }
  s.nested_offset = absmax_cpu.mean().item<float>();
  s.absmax = at::empty({nb}, w.options().dtype(at::kByte));
  s.nested_absmax = at::empty({(nb + 255) / 256}, w.options().dtype(at::kFloat));
  s.nested_quant_map = signed_dynamic_map(w.device());  // [256], pinned + non-blocking
  launch_quantize_nested(absmax.data_ptr<float>(), nb, s.nested_offset, s.nested_quant_map.data_ptr<float>(),
                         s.absmax.data_ptr<uint8_t>(), s.nested_absmax.data_ptr<float>(), stream);
  check_launch("quantize_4bit (nested)");
  return s;
}

void dequantize_4bit_out(const QuantState& s, at::Tensor& out) {
  TORCH_CHECK(s.packed.is_cuda() && out.device() == s.packed.device(),
              "nf4_cuda::dequantize_4bit_out: state and out must be on one CUDA device, found ", s.packed.device(),
              " and ", out.device());
  TORCH_CHECK(out.is_contiguous() && out.numel() == s.numel(), "nf4_cuda::dequantize_4bit_out: out must be "
              "contiguous with ", s.numel(), " elements, found ", out.numel());
  const c10::cuda::CUDAGuard guard(s.packed.device());
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const at::Tensor packed = s.packed.contiguous();
  const at::Tensor absmax = s.absmax.contiguous();
  DequantArgs a{};
  a.packed = packed.data_ptr<uint8_t>();
  at::Tensor nested_absmax, nested_map;
  if (s.double_quant()) {
    nested_absmax = s.nested_absmax.contiguous();
    nested_map = s.nested_quant_map.contiguous();
    a.absmax_q = absmax.data_ptr<uint8_t>();
    a.nested_absmax = nested_absmax.data_ptr<float>();
    a.nested_map = nested_map.data_ptr<float>();
    a.offset = s.nested_offset;
  } else {
    a.absmax_f32 = absmax.data_ptr<float>();
  }
  a.n = s.numel();
  a.block_shift = log2_of(s.blocksize);  // a power of two (check_quant_state)
  const m::CodeTables tables;
  const float* code = s.type == QuantType::kFP4 ? tables.fp4 : tables.nf4;
  for (int i = 0; i < 16; ++i) a.code[i] = code[i];
  // A chunk's packed bytes: 4 for 2-byte outputs, 2 for fp32.
  const size_t chunk_packed_bytes = out.scalar_type() == at::kFloat ? 2 : 4;
  const bool vector_io = aligned_to(packed.data_ptr(), chunk_packed_bytes) && aligned_to(out.data_ptr(), 16);
  switch (out.scalar_type()) {
    case at::kFloat: launch_dequantize_4bit(a, vector_io, out.data_ptr<float>(), stream); break;
    case at::kBFloat16:
      launch_dequantize_4bit(a, vector_io, reinterpret_cast<__nv_bfloat16*>(out.data_ptr<at::BFloat16>()), stream);
      break;
    case at::kHalf:
      launch_dequantize_4bit(a, vector_io, reinterpret_cast<__half*>(out.data_ptr<at::Half>()), stream);
      break;
    default:
      TORCH_CHECK(false, "dequantize_4bit: out_dtype must be float32, bfloat16 or float16, found ", out.scalar_type());
  }
  check_launch("dequantize_4bit");
}

at::Tensor dequantize_4bit(const QuantState& s, at::ScalarType out_dtype) {
  check_quant_state(s);
  TORCH_CHECK(s.packed.is_cuda(), "nf4_cuda::dequantize_4bit: state must be on a CUDA device, found ",
              s.packed.device());
  at::Tensor out = at::empty(s.shape, s.packed.options().dtype(out_dtype));
  nf4_cuda::dequantize_4bit_out(s, out);
  return out;
}

}  // namespace qtrain::ops::nf4_cuda
