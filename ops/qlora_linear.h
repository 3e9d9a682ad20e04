// The QLoRA linear op: y = x·deq(W)ᵀ (+ bias) + s·(dropout(x)·Aᵀ)·Bᵀ as one autograd function.
// W stays in NF4/FP4 (ops/nf4.h) and is dequantized again in backward, never saved in full precision;
// bias is frozen; gradients flow to x, A and B only (formats.md §3.4 for the PEFT conventions).
// Without an adapter (A and B undefined) the same op is the frozen 4-bit linear y = x·deq(W)ᵀ (+ bias),
// differentiable in x only and equally free of a saved full-precision W.
#pragma once
#include "ops/nf4.h"

#include <ATen/ATen.h>

#include <cstdint>

namespace qtrain::ops {

enum class LoraScaling { kStandard, kRsLora };  // alpha / r, or alpha / sqrt(r) (rsLoRA)

struct LoraConfig {
  int64_t rank = 8;
  double alpha = 16.0;
  LoraScaling scaling = LoraScaling::kStandard;
  double dropout = 0.0;  // probability of zeroing an input of the LoRA branch
};

// s = alpha / r or alpha / sqrt(r).
double lora_scale(const LoraConfig& config);

struct LoraWeights {
  at::Tensor A;  // [r, K]  kaiming_uniform(a = sqrt(5)) = U(-1/sqrt(K), 1/sqrt(K)), as PEFT
  at::Tensor B;  // [N, r]  zeros
};

// PEFT's default init (init_lora_weights=True), drawn from `gen` so runs are reproducible.
LoraWeights init_lora(int64_t in_features, int64_t out_features, const LoraConfig& config, at::Generator gen,
                      at::ScalarType dtype = at::kFloat);

// Inverted-dropout mask for x [..., K]: 0 with probability p, else 1/(1-p); undefined when p == 0. Keep it
// (or the generator state) to replay the same mask, e.g. when recomputing a layer in backward.
at::Tensor lora_dropout_mask(at::IntArrayRef x_shape, double p, at::Generator gen, at::ScalarType dtype);

struct QLoraLinearArgs {
  const QuantState* weight = nullptr;  // W [N, K], frozen
  at::Tensor bias;                     // [N] or undefined; frozen (must not require grad)
  at::Tensor A;                        // [r, K], or undefined (with B) for the frozen linear
  at::Tensor B;                        // [N, r], or undefined (with A)
  double scale = 1.0;                  // lora_scale(config)
  at::Tensor dropout_mask;             // like x, or undefined for no dropout
};

// x [..., K] -> y [..., N] in x's dtype. The LoRA branch runs in A's dtype (fp32 master weights by default)
// and is cast back, as PEFT does. Differentiable in x, A and B (in x only without an adapter).
at::Tensor qlora_linear(const at::Tensor& x, const QLoraLinearArgs& args);

}  // namespace qtrain::ops
