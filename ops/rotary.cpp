// Rotary embedding (ops/rotary.h): the composition, and the CPU kernel that computes the same roundings in
// one pass. Per pair (x₁ = x[i], x₂ = x[i + half], tables c, s at i and i + half):
//   forward   o₁ = x₁·c₁ − x₂·s₁          o₂ = x₂·c₂ + x₁·s₂
//   backward  g₁' = g₁·c₁ + g₂·s₂          g₂' = g₂·c₂ − g₁·s₁
// each product and the sum rounded to the tensor's dtype as ATen rounds x·cos, rotate_half(x)·sin and their
// sum (−(a·b) is exact, so subtracting a product equals adding the negated one). The whole library compiles
// with -ffp-contract=off, so no ISA fuses a product and a sum into one rounding.
#include "ops/rotary.h"

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/autograd.h>

#include <cstring>
#include <type_traits>

namespace qtrain::ops {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Round a float to T and back (identity for float): what ATen stores after each op in T.
template <typename T>
float rnd(float v) {
  if constexpr (std::is_same_v<T, float>) {
    return v;
  } else {
    return static_cast<float>(T(v));
  }
}

// One pair in T's roundings; V is float or a float vector (only for T = float, where rnd is the identity).
template <typename T, bool kBackward, typename V>
inline void rotate_pair(V x1, V x2, V c1, V s1, V c2, V s2, V* o1, V* o2) {
  if constexpr (std::is_same_v<T, float>) {
    if constexpr (kBackward) {
      *o1 = x1 * c1 + x2 * s2;
      *o2 = x2 * c2 - x1 * s1;
    } else {
      *o1 = x1 * c1 - x2 * s1;
      *o2 = x2 * c2 + x1 * s2;
    }
  } else if constexpr (kBackward) {
    *o1 = rnd<T>(rnd<T>(x1 * c1) + rnd<T>(x2 * s2));
    *o2 = rnd<T>(rnd<T>(x2 * c2) - rnd<T>(x1 * s1));
  } else {
    *o1 = rnd<T>(rnd<T>(x1 * c1) - rnd<T>(x2 * s1));
    *o2 = rnd<T>(rnd<T>(x2 * c2) + rnd<T>(x1 * s2));
  }
}

template <typename T, bool kBackward>
void rotate_row_scalar(const T* x, const T* c, const T* s, T* out, int64_t half, int64_t from) {
  for (int64_t i = from; i < half; ++i) {
    float o1, o2;
    rotate_pair<T, kBackward>(static_cast<float>(x[i]), static_cast<float>(x[i + half]), static_cast<float>(c[i]),
                              static_cast<float>(s[i]), static_cast<float>(c[i + half]), static_cast<float>(s[i + half]),
                              &o1, &o2);
    out[i] = static_cast<T>(o1);  // exact: o1 is already a value of T
    out[i + half] = static_cast<T>(o2);
  }
}

// fp32 rows 16 lanes at a time (GCC vector extensions: one zmm, two ymm or four xmm per vector in the
// clone the CPU picks at load time), the tail through the scalar pair.
using Vec16 = float __attribute__((vector_size(64)));

template <bool kBackward>
__attribute__((target_clones("avx512f", "avx2", "default"))) void rotate_row_f32(const float* x, const float* c,
                                                                                 const float* s, float* out,
                                                                                 int64_t half) {
  constexpr int64_t kLanes = 16;
  int64_t i = 0;
  for (; i + kLanes <= half; i += kLanes) {
    Vec16 x1, x2, c1, s1, c2, s2, o1, o2;  // memcpy: unaligned loads and stores
    std::memcpy(&x1, x + i, sizeof x1);
    std::memcpy(&x2, x + half + i, sizeof x2);
    std::memcpy(&c1, c + i, sizeof c1);
    std::memcpy(&s1, s + i, sizeof s1);
    std::memcpy(&c2, c + half + i, sizeof c2);
    std::memcpy(&s2, s + half + i, sizeof s2);
    rotate_pair<float, kBackward>(x1, x2, c1, s1, c2, s2, &o1, &o2);
    std::memcpy(out + i, &o1, sizeof o1);
    std::memcpy(out + half + i, &o2, sizeof o2);
  }
  rotate_row_scalar<float, kBackward>(x, c, s, out, half, i);
}

// x, out [B, H, S, D] with unit stride in D; cos, sin [B, S, D] with unit stride in D (batch may be
// broadcast). Rows run in (b, s, h) order: the layout of q and k (a transposed [B, S, H, D]) and one
// table row for all heads.
template <typename T, bool kBackward>
void rotate_rows(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, const at::Tensor& out) {
  const int64_t nb = x.size(0), nh = x.size(1), ns = x.size(2), d = x.size(3), half = d / 2;
  const T* xp = x.const_data_ptr<T>();
  const T* cp = cos.const_data_ptr<T>();
  const T* sp = sin.const_data_ptr<T>();
  T* op = out.mutable_data_ptr<T>();
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(d, 1));
  at::parallel_for(0, nb * ns * nh, grain, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const int64_t h = n % nh, bs = n / nh, si = bs % ns, b = bs / ns;
      const T* xr = xp + b * x.stride(0) + h * x.stride(1) + si * x.stride(2);
      T* orow = op + b * out.stride(0) + h * out.stride(1) + si * out.stride(2);
      const T* cr = cp + b * cos.stride(0) + si * cos.stride(1);
      const T* sr = sp + b * sin.stride(0) + si * sin.stride(1);
      if constexpr (std::is_same_v<T, float>) {
        rotate_row_f32<kBackward>(xr, cr, sr, orow, half);
      } else {
        rotate_row_scalar<T, kBackward>(xr, cr, sr, orow, half, 0);
      }
    }
  });
}

// x [B, H, S, D] → the rotated (or, in backward, the gradient-rotated) tensor in x's layout.
template <bool kBackward>
at::Tensor rotate_cpu(const at::Tensor& x_in, const at::Tensor& cos_in, const at::Tensor& sin_in) {
  const at::Tensor x = x_in.stride(3) == 1 ? x_in : x_in.contiguous();
  const at::Tensor cos = cos_in.stride(2) == 1 ? cos_in : cos_in.contiguous();
  const at::Tensor sin = sin_in.stride(2) == 1 ? sin_in : sin_in.contiguous();
  at::Tensor out = at::empty_like(x);  // same strides for a dense x (q, k: a transposed [B, S, H, D])
  if (out.stride(3) != 1) out = at::empty(x.sizes(), x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "rotary",
                                  [&] { rotate_rows<scalar_t, kBackward>(x, cos, sin, out); });
  return out;
}

struct RotaryFunction : public torch::autograd::Function<RotaryFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
    ctx->save_for_backward({cos, sin});  // the tables only: x is not needed for a linear map
    return rotate_cpu<false>(x, cos, sin);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    return {rotate_cpu<true>(grad_outputs[0], saved[0], saved[1]), at::Tensor(), at::Tensor()};
  }
};

bool fused_applies(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  const auto t = x.scalar_type();
  return x.device().is_cpu() && (t == at::kFloat || t == at::kBFloat16 || t == at::kHalf) &&
         cos.scalar_type() == t && sin.scalar_type() == t && cos.device().is_cpu() && sin.device().is_cpu() &&
         !cos.requires_grad() && !sin.requires_grad();
}

void check_shapes(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  TORCH_CHECK(x.dim() == 4 && x.size(3) % 2 == 0, "rotary: x must be [batch, heads, seq, head_dim] with an even head_dim, got ",
              x.sizes());
  for (const at::Tensor* t : {&cos, &sin}) {
    TORCH_CHECK(t->dim() == 3 && t->size(1) == x.size(2) && t->size(2) == x.size(3) &&
                    (t->size(0) == x.size(0) || t->size(0) == 1),
                "rotary: tables must be [batch, seq, head_dim] = [", x.size(0), ", ", x.size(2), ", ", x.size(3),
                "], got ", t->sizes());
  }
}

}  // namespace

at::Tensor rotary_reference(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  check_shapes(x, cos, sin);
  const int64_t half = x.size(-1) / 2;
  const at::Tensor rotated = at::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
  return x * cos.unsqueeze(1) + rotated * sin.unsqueeze(1);
}

at::Tensor rotary(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  check_shapes(x, cos, sin);
  if (!fused_applies(x, cos, sin)) return rotary_reference(x, cos, sin);
  const at::Tensor c = cos.expand({x.size(0), -1, -1}), s = sin.expand({x.size(0), -1, -1});
  if (!at::GradMode::is_enabled() || !x.requires_grad()) return rotate_cpu<false>(x, c, s);
  return RotaryFunction::apply(x, c, s);
}

}  // namespace qtrain::ops
