// Fused RMSNorm on the CPU: rows split over ATen's thread pool; per row one pass for the fp32 sum of squares
// and one for y = w · T(x · rstd); backward recomputes x̂ from the saved x and rstd (two passes per row).
// CUDA takes rms_norm_reference for now (no fused kernel there yet).
//
// Vectorisation: GCC vector extensions over 16 fp32 lanes, compiled once per ISA by target_clones (AVX-512,
// AVX2, baseline SSE2) and chosen at load time. The lanes and the order of the final reduction are written out
// in the source, and FP contraction is off in this file, so every ISA gives the same bits: the AVX-512 clone
// would otherwise fuse acc + v·v (and gw·rstd − x·b) into FMAs and round differently from the others.
#include "ops/rms_norm.h"

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

// No FP contraction: the whole ops library compiles with -ffp-contract=off (ops/CMakeLists.txt).
#if defined(__GNUC__) && !defined(__clang__)
// 64-byte vectors in always-inlined helpers: the ABI note about passing them by value does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define QTRAIN_RMS_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define QTRAIN_RMS_CLONES
#endif
#define QTRAIN_RMS_INLINE inline __attribute__((always_inline))

namespace qtrain::ops {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

constexpr int kLanes = 16;
using v16f = float __attribute__((vector_size(64)));
using v16u = uint32_t __attribute__((vector_size(64)));
using v16h = uint16_t __attribute__((vector_size(32)));

// 16 elements of T widened to fp32 (exact for every T).
template <typename T>
QTRAIN_RMS_INLINE v16f load16(const T* p) {
  v16f v;
  if constexpr (std::is_same_v<T, float>) {
    std::memcpy(&v, p, sizeof(v));
  } else if constexpr (std::is_same_v<T, c10::BFloat16>) {
    v16h h;
    std::memcpy(&h, p, sizeof(h));
    v = reinterpret_cast<v16f>(__builtin_convertvector(h, v16u) << 16);
  } else {
    // float16 converts element by element (c10's IEEE conversion): no F16C on the baseline, and CPU fp16
    // training is rare enough not to warrant a third code path.
    for (int l = 0; l < kLanes; ++l) v[l] = static_cast<float>(p[l]);
  }
  return v;
}

// bfloat16 bits (in the low half of each lane) of 16 fp32 values: c10's round-to-nearest-even
// (u + 0x7FFF + lsb) >> 16, with NaN → 0x7FC0 as c10::BFloat16 does (the integer trick alone would turn some
// NaNs into inf).
QTRAIN_RMS_INLINE v16u bf16_bits(const v16f& v) {
  const v16u u = reinterpret_cast<v16u>(v);
  const v16u r = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  return (v != v) ? v16u{} + 0x7FC0u : r;
}

// 16 fp32 values rounded to T and stored.
template <typename T>
QTRAIN_RMS_INLINE void store16(T* p, const v16f& v) {
  if constexpr (std::is_same_v<T, float>) {
    std::memcpy(p, &v, sizeof(v));
  } else if constexpr (std::is_same_v<T, c10::BFloat16>) {
    const v16h h = __builtin_convertvector(bf16_bits(v), v16h);
    std::memcpy(p, &h, sizeof(h));
  } else {
    for (int l = 0; l < kLanes; ++l) p[l] = T(v[l]);
  }
}

// fp32 → T → fp32: the rounding that x.to(T) (forward) and a product in T (backward) apply.
template <typename T>
QTRAIN_RMS_INLINE v16f round16(const v16f& v) {
  if constexpr (std::is_same_v<T, float>) {
    return v;
  } else if constexpr (std::is_same_v<T, c10::BFloat16>) {
    return reinterpret_cast<v16f>(bf16_bits(v) << 16);  // in registers, no trip through memory
  } else {
    alignas(64) T tmp[kLanes];
    store16(tmp, v);
    return load16(tmp);
  }
}

template <typename T>
QTRAIN_RMS_INLINE float round1(float v) {
  return static_cast<float>(T(v));
}

// The lanes in a fixed order, then the tail: the same sum on every ISA.
QTRAIN_RMS_INLINE float reduce16(const v16f& acc) {
  float s = 0.0f;
  for (int l = 0; l < kLanes; ++l) s += acc[l];
  return s;
}

template <typename T>
struct ForwardRows {
  const T* x;    // [rows, H]
  const T* w;    // [H]
  T* y;          // [rows, H]
  float* rstd;   // [rows]
  int64_t hidden;
  float eps;
};

template <typename T>
struct BackwardRows {
  const T* x;         // [rows, H]
  const T* w;         // [H]
  const T* gy;        // [rows, H]
  const float* rstd;  // [rows]
  T* gx;              // [rows, H]
  int64_t hidden;
};

template <typename T>
QTRAIN_RMS_INLINE void forward_rows_impl(const ForwardRows<T>& a, int64_t r0, int64_t r1) {
  const int64_t H = a.hidden;
  const int64_t vec = H / kLanes * kLanes;
  for (int64_t r = r0; r < r1; ++r) {
    const T* x = a.x + r * H;
    T* y = a.y + r * H;
    v16f acc = {};
    for (int64_t i = 0; i < vec; i += kLanes) {
      const v16f v = load16(x + i);
      acc += v * v;
    }
    float ss = reduce16(acc);
    for (int64_t i = vec; i < H; ++i) {
      const float v = static_cast<float>(x[i]);
      ss += v * v;
    }
    // As ATen: mean = sum / H in fp32, eps rounded to fp32 for the add, rsqrt = 1 / sqrt.
    const float rstd = 1.0f / std::sqrt(ss / static_cast<float>(H) + a.eps);
    a.rstd[r] = rstd;
    for (int64_t i = 0; i < vec; i += kLanes) {
      const v16f xhat = round16<T>(load16(x + i) * rstd);
      store16(y + i, load16(a.w + i) * xhat);
    }
    for (int64_t i = vec; i < H; ++i) {
      const float xhat = round1<T>(static_cast<float>(x[i]) * rstd);
      y[i] = T(static_cast<float>(a.w[i]) * xhat);
    }
  }
}

// gw = T(gy · w) as the autograd of w * x̂ rounds it; dx = rstd·gw − x·(rstd³·Σ(gw·x)/H)
// = rstd·(gw − x̂·mean(gw·x̂)), the sum of the direct path and the rsqrt/mean/pow path of the composition.
template <typename T>
QTRAIN_RMS_INLINE void backward_rows_impl(const BackwardRows<T>& a, int64_t r0, int64_t r1) {
  const int64_t H = a.hidden;
  const int64_t vec = H / kLanes * kLanes;
  for (int64_t r = r0; r < r1; ++r) {
    const T* x = a.x + r * H;
    const T* gy = a.gy + r * H;
    T* gx = a.gx + r * H;
    const float rstd = a.rstd[r];
    v16f acc = {};
    for (int64_t i = 0; i < vec; i += kLanes) {
      const v16f gw = round16<T>(load16(gy + i) * load16(a.w + i));
      acc += gw * load16(x + i);
    }
    float dot = reduce16(acc);
    for (int64_t i = vec; i < H; ++i) {
      const float gw = round1<T>(static_cast<float>(gy[i]) * static_cast<float>(a.w[i]));
      dot += gw * static_cast<float>(x[i]);
    }
    const float b = rstd * rstd * rstd * (dot / static_cast<float>(H));
    for (int64_t i = 0; i < vec; i += kLanes) {
      const v16f gw = round16<T>(load16(gy + i) * load16(a.w + i));
      store16(gx + i, gw * rstd - load16(x + i) * b);
    }
    for (int64_t i = vec; i < H; ++i) {
      const float gw = round1<T>(static_cast<float>(gy[i]) * static_cast<float>(a.w[i]));
      gx[i] = T(gw * rstd - static_cast<float>(x[i]) * b);
    }
  }
}

// One clone set per dtype: target_clones does not apply to templates.
QTRAIN_RMS_CLONES void forward_rows(const ForwardRows<float>& a, int64_t r0, int64_t r1) {
  forward_rows_impl(a, r0, r1);
}
QTRAIN_RMS_CLONES void forward_rows(const ForwardRows<c10::BFloat16>& a, int64_t r0, int64_t r1) {
  forward_rows_impl(a, r0, r1);
}
QTRAIN_RMS_CLONES void forward_rows(const ForwardRows<c10::Half>& a, int64_t r0, int64_t r1) {
  forward_rows_impl(a, r0, r1);
}
QTRAIN_RMS_CLONES void backward_rows(const BackwardRows<float>& a, int64_t r0, int64_t r1) {
  backward_rows_impl(a, r0, r1);
}
QTRAIN_RMS_CLONES void backward_rows(const BackwardRows<c10::BFloat16>& a, int64_t r0, int64_t r1) {
  backward_rows_impl(a, r0, r1);
}
QTRAIN_RMS_CLONES void backward_rows(const BackwardRows<c10::Half>& a, int64_t r0, int64_t r1) {
  backward_rows_impl(a, r0, r1);
}

bool fused_dtype(at::ScalarType t) { return t == at::kFloat || t == at::kBFloat16 || t == at::kHalf; }

// f(T{}) for the three fused dtypes; anything else is a caller bug (rms_norm routes it to the reference).
template <typename F>
void dispatch_fused(at::ScalarType t, const char* what, F&& f) {
  switch (t) {
    case at::kFloat: return f(float{});
    case at::kBFloat16: return f(c10::BFloat16{});
    case at::kHalf: return f(c10::Half{});
    default: break;
  }
  TORCH_CHECK(false, what, ": no fused kernel for dtype ", t, " (expected float32, bfloat16 or float16)");
}

// Rows per task: about ATen's GRAIN_SIZE elements, so small tensors stay on the calling thread.
int64_t grain_rows(int64_t hidden) { return std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(1, hidden)); }

// x [..., H] → y [..., H]; *rstd_out [..., 1] fp32.
at::Tensor fused_forward(const at::Tensor& x, const at::Tensor& weight, double eps, at::Tensor* rstd_out) {
  const int64_t H = x.size(-1);
  const at::Tensor xc = x.contiguous();
  const at::Tensor wc = weight.contiguous();
  at::Tensor y = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  std::vector<int64_t> rstd_shape = x.sizes().vec();
  rstd_shape.back() = 1;
  at::Tensor rstd = at::empty(rstd_shape, x.options().dtype(at::kFloat));
  const int64_t rows = rstd.numel();
  if (H == 0) {
    rstd.fill_(std::numeric_limits<float>::quiet_NaN());  // mean of nothing, as ATen
  } else {
    dispatch_fused(x.scalar_type(), "rms_norm forward", [&](auto tag) {
      using T = decltype(tag);
      const ForwardRows<T> a{xc.data_ptr<T>(), wc.data_ptr<T>(), y.data_ptr<T>(),
                             rstd.data_ptr<float>(), H, static_cast<float>(eps)};
      at::parallel_for(0, rows, grain_rows(H), [&](int64_t b, int64_t e) { forward_rows(a, b, e); });
    });
  }
  if (rstd_out) *rstd_out = rstd;
  return y;
}

// gy, x [..., H]; rstd [..., 1] → gx [..., H] in x's dtype.
at::Tensor fused_backward(const at::Tensor& gy, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& rstd) {
  const int64_t H = x.size(-1);
  const at::Tensor xc = x.contiguous();
  const at::Tensor gc = gy.to(x.scalar_type()).contiguous();  // an expanded gy (from sum()) is materialised here
  const at::Tensor wc = weight.contiguous();
  const at::Tensor rc = rstd.contiguous();
  at::Tensor gx = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  if (H == 0) return gx;
  const int64_t rows = rc.numel();
  dispatch_fused(x.scalar_type(), "rms_norm backward", [&](auto tag) {
    using T = decltype(tag);
    const BackwardRows<T> a{xc.data_ptr<T>(), wc.data_ptr<T>(), gc.data_ptr<T>(),
                            rc.data_ptr<float>(), gx.data_ptr<T>(), H};
    at::parallel_for(0, rows, grain_rows(H), [&](int64_t b, int64_t e) { backward_rows(a, b, e); });
  });
  return gx;
}

struct RmsNormFunction : public torch::autograd::Function<RmsNormFunction> {
  // x [..., H]; weight [H], frozen (no edge: it does not require grad on this path).
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight, double eps) {
    at::Tensor rstd;  // [..., 1] fp32
    at::Tensor y = fused_forward(x, weight, eps, &rstd);
    // x and weight are alive anyway; rstd is the only new tensor kept (no [..., H] temporaries).
    ctx->save_for_backward({x, weight, rstd});
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const variable_list saved = ctx->get_saved_variables();
    at::Tensor gx;
    if (ctx->needs_input_grad(0)) gx = fused_backward(grad_outputs[0], saved[0], saved[1], saved[2]);
    return {gx, at::Tensor(), at::Tensor()};  // Inputs: x, weight (frozen), eps.
  }
};

}  // namespace

at::Tensor rms_norm_reference(const at::Tensor& x, const at::Tensor& weight, double eps) {
  // transformers' LlamaRMSNorm: normalise in float32, cast back, then scale in the weight dtype.
  at::Tensor xf = x.to(at::kFloat);
  const at::Tensor var = xf.pow(2).mean(-1, /*keepdim=*/true);
  xf = xf * at::rsqrt(var + eps);
  return weight * xf.to(x.scalar_type());
}

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  TORCH_CHECK(x.dim() >= 1, "rms_norm: x must be [..., H], found a 0-d tensor");
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == x.size(-1), "rms_norm: weight must be [H] with H = ",
              x.size(-1), " (x's last dim), found ", weight.sizes());
  // The fused kernel is CPU-only and keeps weight frozen; CUDA, a trainable weight and mixed or other
  // dtypes run the ATen composition.
  const bool fused = x.device().is_cpu() && weight.device().is_cpu() && !weight.requires_grad() &&
                     x.scalar_type() == weight.scalar_type() && fused_dtype(x.scalar_type());
  if (!fused) return rms_norm_reference(x, weight, eps);
  // Without grad (evaluation, generation) there is no graph to build: the forward kernel alone.
  if (!at::GradMode::is_enabled() || !x.requires_grad()) return fused_forward(x, weight, eps, nullptr);
  return RmsNormFunction::apply(x, weight, eps);
}

}  // namespace qtrain::ops
