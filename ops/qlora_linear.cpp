// QLoRA linear: forward and hand-written backward in torch::autograd::Functions (with an adapter, and the
// frozen base alone), so the full-precision base weight exists only transiently (dequantized in forward,
// and again in backward for grad x). Both share base_forward / base_grad_x: one implementation of the math.
#include "ops/qlora_linear.h"

#include <torch/csrc/autograd/custom_function.h>

#include <cmath>

namespace qtrain::ops {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The frozen NF4 state travels through the autograd context as its tensors and scalars (an IValue map):
// referenced, not copied, and alive as long as the graph is.
void save_state(AutogradContext* ctx, const QuantState& s) {
  ctx->saved_data["packed"] = s.packed;
  ctx->saved_data["absmax"] = s.absmax;
  ctx->saved_data["nested_absmax"] = s.nested_absmax;
  ctx->saved_data["nested_map"] = s.nested_quant_map;
  ctx->saved_data["quant_map"] = s.quant_map;
  ctx->saved_data["offset"] = static_cast<double>(s.nested_offset);
  ctx->saved_data["blocksize"] = s.blocksize;
  ctx->saved_data["type"] = static_cast<int64_t>(s.type);
  ctx->saved_data["shape"] = s.shape;
  ctx->saved_data["dtype"] = static_cast<int64_t>(s.dtype);
}

QuantState load_state(AutogradContext* ctx) {
  QuantState s;
  s.packed = ctx->saved_data["packed"].toTensor();
  s.absmax = ctx->saved_data["absmax"].toTensor();
  s.nested_absmax = ctx->saved_data["nested_absmax"].toTensor();
  s.nested_quant_map = ctx->saved_data["nested_map"].toTensor();
  s.quant_map = ctx->saved_data["quant_map"].toTensor();
  s.nested_offset = static_cast<float>(ctx->saved_data["offset"].toDouble());
  s.blocksize = ctx->saved_data["blocksize"].toInt();
  s.type = static_cast<QuantType>(ctx->saved_data["type"].toInt());
  s.shape = ctx->saved_data["shape"].toIntVector();
  s.dtype = static_cast<at::ScalarType>(ctx->saved_data["dtype"].toInt());
  return s;
}

// deq(W) [N, K] in the compute dtype `t`. The kernels produce fp32/bf16/fp16; fp64 (used by the
// finite-difference test) widens the exact fp32 values.
at::Tensor dequantize_as(const QuantState& s, at::ScalarType t) {
  if (t == at::kFloat || t == at::kBFloat16 || t == at::kHalf) return dequantize_4bit(s, t);
  return dequantize_4bit(s, at::kFloat).to(t);
}

// The frozen inputs travel as one non-tensor argument: autograd creates no edges for them, and optional
// (undefined) tensors are not allowed among a custom Function's tensor inputs.
struct FrozenInputs {
  const QuantState* weight;  // W [N, K]
  at::Tensor bias;           // [N] or undefined
  at::Tensor mask;           // [T, K] or undefined
  double scale;
};

// The frozen base, shared by both autograd functions below. y = x·deq(W)ᵀ + b: x [T, K] → [T, N].
at::Tensor base_forward(const at::Tensor& x, const QuantState& weight, const at::Tensor& bias) {
  const at::Tensor w = dequantize_as(weight, x.scalar_type());  // [N, K], dropped after this call
  return bias.defined() ? at::addmm(bias.to(x.scalar_type()), x, w.t()) : at::mm(x, w.t());
}

// Its input gradient gx = gy·deq(W): gy [T, N] → [T, K] in dtype `t`, W dequantized again (never saved).
at::Tensor base_grad_x(const at::Tensor& gy, const QuantState& weight, at::ScalarType t) {
  return at::mm(gy.to(t), dequantize_as(weight, t));
}

// y = x·deq(W)ᵀ + b + s·(mask⊙x)·Aᵀ·Bᵀ; h = (mask⊙x)·Aᵀ [T, r] is returned for backward.
at::Tensor qlora_forward(const at::Tensor& x, const at::Tensor& A, const at::Tensor& B, const FrozenInputs& f,
                         at::Tensor* h_out) {
  at::Tensor y = base_forward(x, *f.weight, f.bias);  // [T, N]
  const at::Tensor xd = (f.mask.defined() ? x * f.mask : x).to(A.scalar_type());  // [T, K]
  const at::Tensor h = at::mm(xd, A.t());                                        // [T, r]
  if (y.scalar_type() == B.scalar_type()) {
    // The GEMM accumulates s·h·Bᵀ into y itself (beta 1, alpha s): no [T, N] temporary and no separate scale
    // and add passes over it (those two passes were ~10% of a CPU step, docs/PERFORMANCE.md).
    y.addmm_(h, B.t(), /*beta=*/1.0, /*alpha=*/f.scale);
  } else {
    y.add_(at::mm(h, B.t()).mul_(f.scale).to(y.scalar_type()));  // LoRA in fp32 over a bf16/fp16 base
  }
  if (h_out) *h_out = h;
  return y;
}

struct QLoraLinearFunction : public torch::autograd::Function<QLoraLinearFunction> {
  // x [T, K]; A [r, K]; B [N, r].
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& A, const at::Tensor& B,
                            const FrozenInputs* frozen) {
    const QuantState* weight = frozen->weight;
    const at::Tensor& mask = frozen->mask;
    const double scale = frozen->scale;
    at::Tensor h;  // [T, r]
    at::Tensor y = qlora_forward(x, A, B, *frozen, &h);
    save_state(ctx, *weight);
    ctx->saved_data["scale"] = scale;
    ctx->save_for_backward({x, A, B, mask, h});
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor& x = saved[0];
    const at::Tensor& A = saved[1];
    const at::Tensor& B = saved[2];
    const at::Tensor& mask = saved[3];
    const at::Tensor& h = saved[4];
    const double scale = ctx->saved_data["scale"].toDouble();
    const at::Tensor gy = grad_outputs[0];                          // [T, N]
    // The scale is applied to the rank-r products, not to gy: s·(gyᵀh) and s·(gy·B) scale [N, r] and [T, r]
    // instead of a [T, N] copy of gy.
    const at::Tensor gl = gy.to(A.scalar_type());                   // [T, N], LoRA branch dtype (no copy if equal)
    const at::Tensor gB = at::mm(gl.t(), h).mul_(scale);            // [N, r]
    const at::Tensor gh = at::mm(gl, B).mul_(scale);                // [T, r]
    at::Tensor gA, gx;
    if (ctx->needs_input_grad(1)) {
      const at::Tensor xd = (mask.defined() ? x * mask : x).to(A.scalar_type());
      gA = at::mm(gh.t(), xd);  // [r, K]
    }
    if (ctx->needs_input_grad(0)) {
      gx = base_grad_x(gy, load_state(ctx), x.scalar_type());  // [T, K], a fresh tensor
      if (!mask.defined() && gx.scalar_type() == gh.scalar_type()) {
        gx.addmm_(gh, A);  // the GEMM accumulates gh·A into gx: no [T, K] temporary, no add pass
      } else {
        at::Tensor gxd = at::mm(gh, A);  // [T, K]
        if (mask.defined()) gxd.mul_(mask);
        gx.add_(gxd.to(gx.scalar_type()));
      }
    }
    // Inputs: x, A, B, frozen (W, bias, mask: no gradient by design).
    return {gx, gA, ctx->needs_input_grad(2) ? gB : at::Tensor(), at::Tensor()};
  }
};

// A 4-bit linear without an adapter (target_modules narrower than all-linear): plain autograd through
// at::linear(x, deq(W)) would save the full-precision W for grad x until backward; this saves only
// the 4-bit state (and not x: W needs no gradient).
struct FrozenLinearFunction : public torch::autograd::Function<FrozenLinearFunction> {
  // x [T, K].
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const FrozenInputs* frozen) {
    save_state(ctx, *frozen->weight);
    ctx->saved_data["x_dtype"] = static_cast<int64_t>(x.scalar_type());
    return base_forward(x, *frozen->weight, frozen->bias);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto t = static_cast<at::ScalarType>(ctx->saved_data["x_dtype"].toInt());
    at::Tensor gx = ctx->needs_input_grad(0) ? base_grad_x(grad_outputs[0], load_state(ctx), t) : at::Tensor();
    return {gx, at::Tensor()};  // Inputs: x, frozen (W, bias: no gradient by design).
  }
};

}  // namespace

double lora_scale(const LoraConfig& c) {
  TORCH_CHECK(c.rank > 0, "LoraConfig: rank must be positive, found ", c.rank);
  switch (c.scaling) {
    case LoraScaling::kStandard: return c.alpha / static_cast<double>(c.rank);
    case LoraScaling::kRsLora: return c.alpha / std::sqrt(static_cast<double>(c.rank));
  }
  TORCH_CHECK(false, "LoraConfig: unknown scaling value ", static_cast<int>(c.scaling),
              " (expected kStandard or kRsLora)");
}

LoraWeights init_lora(int64_t in_features, int64_t out_features, const LoraConfig& c, at::Generator gen,
                      at::ScalarType dtype) {
  TORCH_CHECK(in_features > 0 && out_features > 0, "init_lora: features must be positive, found in ", in_features,
              " out ", out_features);
  TORCH_CHECK(c.rank > 0, "init_lora: rank must be positive, found ", c.rank);
  // torch.nn.init.kaiming_uniform_(a=sqrt(5)), same double arithmetic: gain = sqrt(2/(1+a^2)),
  // std = gain/sqrt(fan_in), bound = sqrt(3)*std (= 1/sqrt(fan_in) up to rounding), fan_in = K.
  const double a = std::sqrt(5.0);
  const double gain = std::sqrt(2.0 / (1.0 + a * a));
  const double bound = std::sqrt(3.0) * (gain / std::sqrt(static_cast<double>(in_features)));
  LoraWeights w;
  w.A = at::empty({c.rank, in_features}, at::TensorOptions().dtype(dtype));
  w.A.uniform_(-bound, bound, gen);
  w.B = at::zeros({out_features, c.rank}, at::TensorOptions().dtype(dtype));
  return w;
}

at::Tensor lora_dropout_mask(at::IntArrayRef x_shape, double p, at::Generator gen, at::ScalarType dtype) {
  TORCH_CHECK(p >= 0.0 && p < 1.0, "lora_dropout_mask: p must be in [0, 1), found ", p);
  if (p == 0.0) return at::Tensor();
  // On the generator's device: a CUDA run draws its masks on the GPU (no host RNG, no copy).
  const at::Tensor keep =
      at::empty(x_shape, at::TensorOptions().dtype(at::kFloat).device(gen.device())).bernoulli_(1.0 - p, gen);
  return keep.div_(1.0 - p).to(dtype);
}

at::Tensor qlora_linear(const at::Tensor& x, const QLoraLinearArgs& args) {
  TORCH_CHECK(args.weight != nullptr, "qlora_linear: args.weight (the NF4 QuantState) is null");
  const QuantState& w = *args.weight;
  TORCH_CHECK(w.shape.size() == 2, "qlora_linear: weight must be 2-D [N, K], found shape ", at::IntArrayRef(w.shape));
  const int64_t N = w.shape[0];
  const int64_t K = w.shape[1];
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) == K, "qlora_linear: x must be [..., K] with K = ", K, ", found ",
              x.sizes());
  TORCH_CHECK(args.A.defined() == args.B.defined(), "qlora_linear: A and B must both be given (QLoRA) or both be "
              "undefined (frozen linear), found A ", args.A.defined() ? "defined" : "undefined", " and B ",
              args.B.defined() ? "defined" : "undefined");
  TORCH_CHECK(!args.bias.defined() || (args.bias.dim() == 1 && args.bias.size(0) == N),
              "qlora_linear: bias must be [N] with N = ", N, ", found ", args.bias.sizes());
  TORCH_CHECK(!args.bias.defined() || !args.bias.requires_grad(),
              "qlora_linear: bias is frozen in QLoRA and must not require grad");
  std::vector<int64_t> out_shape = x.sizes().vec();
  out_shape.back() = N;
  const at::Tensor x2 = x.reshape({-1, K});  // [T, K]
  if (!args.A.defined()) {
    TORCH_CHECK(!args.dropout_mask.defined(), "qlora_linear: a dropout_mask needs an adapter (A and B)");
    const FrozenInputs frozen{args.weight, args.bias, at::Tensor(), 0.0};
    if (!at::GradMode::is_enabled()) return base_forward(x2, w, args.bias).reshape(out_shape);
    return FrozenLinearFunction::apply(x2, &frozen).reshape(out_shape);
  }
  TORCH_CHECK(args.A.dim() == 2 && args.A.size(1) == K, "qlora_linear: A must be [r, K] with K = ", K, ", found ",
              args.A.sizes());
  const int64_t r = args.A.size(0);
  TORCH_CHECK(args.B.dim() == 2 && args.B.size(0) == N && args.B.size(1) == r,
              "qlora_linear: B must be [N, r] = [", N, ", ", r, "], found ", args.B.sizes());
  TORCH_CHECK(args.A.scalar_type() == args.B.scalar_type(), "qlora_linear: A and B must share a dtype, found ",
              args.A.scalar_type(), " and ", args.B.scalar_type());
  TORCH_CHECK(!args.dropout_mask.defined() || args.dropout_mask.sizes() == x.sizes(),
              "qlora_linear: dropout_mask must have x's shape ", x.sizes(), ", found ", args.dropout_mask.sizes());
  const at::Tensor mask2 = args.dropout_mask.defined() ? args.dropout_mask.reshape({-1, K}) : at::Tensor();
  const FrozenInputs frozen{args.weight, args.bias, mask2, args.scale};
  // Without grad (evaluation, generation) there is no graph to build: plain forward math.
  if (!at::GradMode::is_enabled()) return qlora_forward(x2, args.A, args.B, frozen, nullptr).reshape(out_shape);
  return QLoraLinearFunction::apply(x2, args.A, args.B, &frozen).reshape(out_shape);
}

}  // namespace qtrain::ops
