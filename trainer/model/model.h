// The Llama-family decoder (Llama 1/2/3, Mistral, Qwen2, Qwen3) as plain libtorch ops:
// embedding → N × [RMSNorm → attention (GQA, RoPE, SDPA) → residual → RMSNorm → SwiGLU → residual]
// → RMSNorm → LM head. Numerics follow transformers op for op (RMSNorm in float32, cos/sin in float32
// then cast) so logits match it to rounding in fp32 and closely in bf16.
#pragma once

#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <vector>

#include <ATen/ATen.h>

#include "data/io/hf_config.h"
#include "ops/nf4.h"
#include "ops/qlora_linear.h"

namespace qtrain {

// Per-call state of a forward pass. The dropout generator is what recompute replays: a layer run
// again in backward draws exactly the masks it drew the first time.
struct RunContext {
  bool training = false;       // LoRA dropout on
  bool recompute = false;      // keep only layer inputs; recompute each layer in backward
  at::Generator dropout_gen;   // required when training with dropout > 0
};

// A trainable low-rank adapter on a frozen linear: y += s·(dropout(x)·Aᵀ)·Bᵀ (PEFT's LoRA).
struct LoraAdapter {
  at::Tensor A;  // [r, in], leaf, requires grad (master weights, fp32 by default)
  at::Tensor B;  // [out, r], leaf, requires grad
  double scale = 1.0;    // alpha / r, or alpha / sqrt(r) with rsLoRA
  double dropout = 0.0;
};

// A frozen linear layer y = x·Wᵀ + b, with W held either dense or in 4 bits (NF4/FP4), in which
// case it is dequantized on the fly and never kept in full precision; optionally with LoRA.
struct Linear {
  at::Tensor weight;                     // [out, in] when dense; undefined when quantized
  std::optional<ops::QuantState> qweight;  // shape [out, in] when quantized
  at::Tensor bias;                       // [out] or undefined
  std::shared_ptr<LoraAdapter> lora;     // null: frozen only
  at::Tensor forward(const at::Tensor& x, const RunContext* ctx = nullptr) const;
  // The base weight in `dtype` (dequantized when 4-bit): [out, in].
  at::Tensor dense_weight(at::ScalarType dtype) const;
};

struct DecoderLayer {
  at::Tensor input_norm;  // [hidden]
  at::Tensor post_attention_norm;  // [hidden]
  Linear q, k, v, o;  // q [heads*head_dim, hidden], k/v [kv_heads*head_dim, hidden], o [hidden, heads*head_dim]
  Linear gate, up, down;  // gate/up [ffn, hidden], down [hidden, ffn]
  at::Tensor q_norm, k_norm;  // [head_dim] (Qwen3 only)
};

struct LoadOptions {
  at::ScalarType dtype = at::kFloat;  // weights and compute
  at::Device device = at::kCPU;
  // Quantize every decoder-layer linear (q, k, v, o, gate, up, down) to 4 bits while loading, one
  // tensor at a time on `device`. Embeddings, norms and lm_head stay in `dtype` (as bitsandbytes does).
  // Checkpoints that are already bnb-4bit load their quantized weights as stored either way.
  std::optional<ops::QuantParams> quantize;
};

// Which linears get LoRA and how (the recipe's lora section, typed).
struct LoraSpec {
  std::vector<std::string> targets = {"all-linear"};  // module short names: q_proj, ..., down_proj
  ops::LoraConfig config;
  at::ScalarType dtype = at::kFloat;  // adapter master weights
};

class WeightSource;  // trainer/model/model.cpp

class LlamaModel {
 public:
  // Reads config.json and the safetensors checkpoint of `dir`, one tensor at a time, converting each
  // straight to the requested dtype/device (same dtype on CPU stays a zero-copy view of the mmap).
  static LlamaModel load(const std::filesystem::path& dir, const LoadOptions& opts);
  // The same architecture with seeded random weights (benchmarks of real shapes without a checkpoint);
  // `gen` must be a generator of opts.device (weights are drawn where they live).
  static LlamaModel random(const ModelConfig& config, const LoadOptions& opts, at::Generator gen);

  const ModelConfig& config() const { return config_; }
  at::ScalarType dtype() const { return dtype_; }
  at::Device device() const { return embed_.device(); }

  // Visits every decoder-layer linear with its Hugging Face module name ("model.layers.3.mlp.up_proj").
  void for_each_linear(const std::function<void(const std::string&, Linear&)>& fn);
  void for_each_linear(const std::function<void(const std::string&, const Linear&)>& fn) const;

  // Attaches PEFT-initialised adapters (A kaiming-uniform from `gen`, B = 0) to the targeted linears,
  // in module order, on the model's device.
  void add_lora(const LoraSpec& spec, at::Generator gen);
  // The adapter tensors under PEFT's file names ("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"),
  // in module order (A then B); the same tensors the optimizer updates.
  std::vector<std::pair<std::string, at::Tensor>> lora_parameters() const;

  // Every weight under its Hugging Face name, 4-bit linears in the bitsandbytes layout
  // (formats.md §1.8), the rest in the model dtype: what a checkpoint writer needs.
  std::map<std::string, at::Tensor> state_tensors() const;

  // ids [batch, seq] int64; attention_mask [batch, seq] (1 = token, 0 = padding) or undefined;
  // positions [batch, seq] or undefined (then 0..seq-1 per row, as transformers does by default).
  // Returns logits [batch, seq, vocab] in the compute dtype.
  at::Tensor forward(const at::Tensor& ids, const at::Tensor& attention_mask = {},
                     const at::Tensor& positions = {}, const RunContext* ctx = nullptr) const;

  // Packed rows: segment_ids [batch, seq] (document index per token, -1 = padding) keep attention
  // inside each document; positions restart per document. Returns the final hidden states
  // [batch, seq, hidden] (the LM head is applied by the caller, so the loss can chunk it).
  at::Tensor hidden_states(const at::Tensor& ids, const at::Tensor& segment_ids, const at::Tensor& positions,
                           const RunContext* ctx = nullptr) const;
  at::Tensor lm_head(const at::Tensor& hidden) const { return at::linear(hidden, lm_head_); }

 private:
  static LlamaModel build(const ModelConfig& config, const WeightSource& weights, const LoadOptions& opts);
  at::Tensor attention(const DecoderLayer& l, const at::Tensor& x, const at::Tensor& mask,
                       const struct RopeTables& rope, const RunContext* ctx) const;
  at::Tensor layer_forward(const DecoderLayer& l, const at::Tensor& h, const at::Tensor& mask,
                           const struct RopeTables& rope, const RunContext* ctx) const;
  at::Tensor run_layers(at::Tensor h, const at::Tensor& mask, const struct RopeTables& rope, const RunContext* ctx) const;
  at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight) const;

  ModelConfig config_;
  at::ScalarType dtype_ = at::kFloat;
  at::Tensor embed_;    // [vocab, hidden]
  std::vector<DecoderLayer> layers_;
  at::Tensor final_norm_;  // [hidden]
  at::Tensor lm_head_;     // [vocab, hidden]; the embedding itself when tied
  at::Tensor inv_freq_;    // [head_dim/2] float32
};

// Boolean attention mask [batch, 1, seq, seq] (true = may attend): causal, keys that are padding
// hidden, optional sliding window. Query rows that are padding attend to themselves only, so no row
// is empty (an empty row is NaN in SDPA); their outputs are never used. Returns an undefined tensor
// when plain causal attention suffices (no padding mask, no window).
at::Tensor build_attention_mask(const at::Tensor& attention_mask, int64_t batch, int64_t seq,
                                std::optional<int64_t> sliding_window, at::Device device);

// The same for packed rows: segment_ids [batch, seq] int (document index, -1 = padding); a query sees
// only earlier keys of its own document.
at::Tensor build_segment_mask(const at::Tensor& segment_ids, std::optional<int64_t> sliding_window);

}  // namespace qtrain
