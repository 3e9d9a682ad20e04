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

// One CUDA block (256 threads) per nested block of 256 scales. absmax [nblocks]; lut [65536];
// q [nblocks]; absmax2 [ceil(nblocks/256)].
__global__ void quantize_nested_kernel(const float* __restrict__ absmax, int64_t nblocks, float offset,
                                       const uint8_t* __restrict__ lut, uint8_t* __restrict__ q,
                                       float* __restrict__ absmax2) {
  __shared__ float smem[256];
  const int64_t i = static_cast<int64_t>(blockIdx.x) * m::kNestedBlocksize + threadIdx.x;
  const float d = i < nblocks ? m::add_rn(absmax[i], -offset) : 0.0f;
  const float am = block_absmax(m::absmax_step(0.0f, d), smem);
  if (threadIdx.x == 0) absmax2[blockIdx.x] = am;
  if (i >= nblocks) return;
  q[i] = am == 0.0f ? uint8_t{0} : lut[m::nested_lut_index(m::mul_rn(d, 1.0f / am))];
}

struct DequantArgs {
  const uint8_t* packed;      // [ceil(n/2)]
  const float* absmax_f32;    // [nblocks] or nullptr when nested
  const uint8_t* absmax_q;    // [nblocks] or nullptr
  const float* nested_absmax; // [ceil(nblocks/256)] or nullptr
  const float* nested_map;    // [256] or nullptr
  float offset;
  int64_t n;
  int blocksize;
  bool fp4;
  bool vector_io;  // packed and out are 16-byte aligned
};

__device__ __forceinline__ float block_scale(const DequantArgs& a, int64_t block, const float* smem_map) {
  if (a.absmax_q == nullptr) return a.absmax_f32[block];
  return m::decode_nested_absmax(smem_map[a.absmax_q[block]], a.nested_absmax[block / m::kNestedBlocksize],
                                 a.offset);
}

// Each thread expands 16 packed bytes = 32 outputs. blocksize >= 32 and is a power of two, so the 32
// outputs of a thread share one scale, decoded here (nested absmax included) instead of in a separate pass.
template <typename T>
__global__ void dequantize_4bit_kernel(DequantArgs a, T* __restrict__ out) {
  __shared__ float smem_map[256];
  __shared__ float smem_code[16];
  if (a.absmax_q != nullptr) {
    for (int k = threadIdx.x; k < 256; k += blockDim.x) smem_map[k] = a.nested_map[k];
  }
  if (threadIdx.x < 16) {
    const m::CodeTables tables;
    smem_code[threadIdx.x] = a.fp4 ? tables.fp4[threadIdx.x] : tables.nf4[threadIdx.x];
  }
  __syncthreads();
  const int64_t first = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * 32;
  if (first >= a.n) return;
  const float scale = block_scale(a, first / a.blocksize, smem_map);
  if (a.vector_io && first + 32 <= a.n) {
    const uint4 raw = *reinterpret_cast<const uint4*>(a.packed + first / 2);
    const uint8_t* bytes = reinterpret_cast<const uint8_t*>(&raw);
    constexpr int kPerStore = 16 / sizeof(T);
    alignas(16) T vals[32];
#pragma unroll
    for (int j = 0; j < 16; ++j) {
      vals[2 * j] = from_float<T>(m::dequant_value(smem_code[bytes[j] >> 4], scale));
      vals[2 * j + 1] = from_float<T>(m::dequant_value(smem_code[bytes[j] & 0x0F], scale));
    }
#pragma unroll
    for (int s = 0; s < 32 / kPerStore; ++s) {
      reinterpret_cast<uint4*>(out + first)[s] = reinterpret_cast<const uint4*>(vals)[s];
    }
    return;
  }
  const int64_t last = min(first + 32, a.n);
  for (int64_t i = first; i < last; ++i) {
    const uint8_t byte = a.packed[i / 2];
    const int code = (i % 2 == 0) ? (byte >> 4) : (byte & 0x0F);
    out[i] = from_float<T>(m::dequant_value(smem_code[code], scale));
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

void launch_quantize_nested(const float* absmax, int64_t nblocks, float offset, const uint8_t* lut, uint8_t* q,
                            float* absmax2, cudaStream_t stream) {
  const int64_t grid = (nblocks + m::kNestedBlocksize - 1) / m::kNestedBlocksize;
  quantize_nested_kernel<<<static_cast<unsigned>(grid), m::kNestedBlocksize, 0, stream>>>(absmax, nblocks, offset,
                                                                                          lut, q, absmax2);
}

template <typename T>
void launch_dequantize_4bit(const DequantArgs& a, T* out, cudaStream_t stream) {
  constexpr int kThreads = 256;
  const int64_t threads_needed = (a.n + 31) / 32;
  const int64_t grid = (threads_needed + kThreads - 1) / kThreads;
  dequantize_4bit_kernel<T><<<static_cast<unsigned>(grid), kThreads, 0, stream>>>(a, out);
}

// ---------------------------------------------------------------------------------------------------
// Tensor glue.
// ---------------------------------------------------------------------------------------------------


bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

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
  s.quant_map = code_table(p.type).to(w.device());
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
  // The fp32 scales are small (n/blocksize floats): validate and average them on the CPU, with the very
  // at::mean bitsandbytes' CPU backend uses, so the GPU and CPU paths store the same offset.
  const at::Tensor absmax_cpu = absmax.cpu();
  TORCH_CHECK(at::isfinite(absmax_cpu).all().item<bool>(),
              "quantize_4bit: tensor w must be finite, found NaN or inf in block ",
              at::logical_not(at::isfinite(absmax_cpu)).nonzero().min().item<int64_t>());
  if (!p.double_quant) {
    s.absmax = absmax;
    return s;
  }
  const at::Tensor dyn = signed_dynamic_map();
  const std::vector<uint8_t> lut = nf4_cpu::build_nested_lut(dyn.data_ptr<float>());
  const at::Tensor lut_dev =
      at::from_blob(const_cast<uint8_t*>(lut.data()), {m::kNestedLutSize}, at::kByte).to(w.device());
  s.nested_offset = absmax_cpu.mean().item<float>();
  s.absmax = at::empty({nb}, w.options().dtype(at::kByte));
  s.nested_absmax = at::empty({(nb + 255) / 256}, w.options().dtype(at::kFloat));
  s.nested_quant_map = dyn.to(w.device());
  launch_quantize_nested(absmax.data_ptr<float>(), nb, s.nested_offset, lut_dev.data_ptr<uint8_t>(),
                         s.absmax.data_ptr<uint8_t>(), s.nested_absmax.data_ptr<float>(), stream);
  check_launch("quantize_4bit (nested)");
  return s;
}

at::Tensor dequantize_4bit(const QuantState& s, at::ScalarType out_dtype) {
  check_quant_state(s);
  TORCH_CHECK(s.packed.is_cuda(), "nf4_cuda::dequantize_4bit: state must be on a CUDA device, found ",
              s.packed.device());
  const c10::cuda::CUDAGuard guard(s.packed.device());
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const at::Tensor packed = s.packed.contiguous();
  const at::Tensor absmax = s.absmax.contiguous();
  at::Tensor out = at::empty(s.shape, packed.options().dtype(out_dtype));
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
  a.blocksize = static_cast<int>(s.blocksize);
  a.fp4 = s.type == QuantType::kFP4;
  a.vector_io = aligned16(packed.data_ptr()) && aligned16(out.data_ptr());
  switch (out_dtype) {
    case at::kFloat: launch_dequantize_4bit(a, out.data_ptr<float>(), stream); break;
    case at::kBFloat16:
      launch_dequantize_4bit(a, reinterpret_cast<__nv_bfloat16*>(out.data_ptr<at::BFloat16>()), stream);
      break;
    case at::kHalf: launch_dequantize_4bit(a, reinterpret_cast<__half*>(out.data_ptr<at::Half>()), stream); break;
    default:
      TORCH_CHECK(false, "dequantize_4bit: out_dtype must be float32, bfloat16 or float16, found ", out_dtype);
  }
  check_launch("dequantize_4bit");
  return out;
}

}  // namespace qtrain::ops::nf4_cuda
