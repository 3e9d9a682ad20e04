// A frozen linear layer of the model, y = x·Wᵀ + b, with W held dense or in 4 bits (NF4/FP4), and an
// optional trainable LoRA adapter y += s·(dropout(x)·Aᵀ)·Bᵀ (PEFT's LoRA). A 4-bit W is dequantized on
// the fly, in forward and again in backward, and never kept in full precision, adapter or not
// (ops/qlora_linear.h).
#pragma once

#include <functional>
#include <memory>
#include <optional>

#include <ATen/ATen.h>

#include "ops/nf4.h"

namespace qtrain {

struct Linear;

// Per-call state of a forward pass. The dropout generator is what recompute replays: a layer run
// again in backward draws exactly the masks it drew the first time.
struct RunContext {
  bool training = false;       // LoRA dropout on
  bool recompute = false;      // keep only layer inputs; recompute each layer in backward
  bool offload_checkpoints = false;  // recompute: keep those inputs in host memory (pinned on CUDA) until backward
  at::Generator dropout_gen;   // required when training with dropout > 0
  // Called with each linear's input x [..., in] before it is applied: how export's calibration
  // collects the activation statistics of every linear (GPTQ's Hessians, AWQ's channel scales).
  std::function<void(const Linear&, const at::Tensor&)> on_linear_input;
};

// A trainable low-rank adapter on a frozen linear: y += s·(dropout(x)·Aᵀ)·Bᵀ (PEFT's LoRA).
struct LoraAdapter {
  at::Tensor A;  // [r, in], leaf, requires grad (master weights, fp32 by default)
  at::Tensor B;  // [out, r], leaf, requires grad
  double scale = 1.0;    // alpha / r, or alpha / sqrt(r) with rsLoRA
  double dropout = 0.0;
};

struct Linear {
  at::Tensor weight;                       // [out, in] when dense; undefined when quantized
  std::optional<ops::QuantState> qweight;  // shape [out, in] when quantized
  at::Tensor bias;                         // [out] or undefined
  std::shared_ptr<LoraAdapter> lora;       // null: frozen only

  // x [..., in] → [..., out] in x's dtype.
  at::Tensor forward(const at::Tensor& x, const RunContext* ctx = nullptr) const;
  // The base weight in `dtype` (dequantized when 4-bit): [out, in].
  at::Tensor dense_weight(at::ScalarType dtype) const;
  // {out, in}.
  std::vector<int64_t> shape() const { return qweight ? qweight->shape : weight.sizes().vec(); }
};

}  // namespace qtrain
