// The Llama-family decoder (Llama 1/2/3, Mistral, Qwen2, Qwen3) as plain libtorch ops:
// embedding → N × [RMSNorm → attention (GQA, RoPE, SDPA) → residual → RMSNorm → SwiGLU → residual]
// → RMSNorm → LM head. Numerics follow transformers op for op (RMSNorm in float32, cos/sin in float32
// then cast) so logits match it to rounding in fp32 and closely in bf16.
#pragma once

#include <array>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <vector>

#include <ATen/ATen.h>

#include "data/io/hf_config.h"
#include "trainer/model/attention.h"
#include "trainer/model/kv_cache.h"
#include "trainer/model/linear.h"
#include "trainer/model/lora.h"
#include "trainer/model/rope.h"
#include "trainer/model/weight_source.h"

namespace qtrain {

struct DecoderLayer {
  at::Tensor input_norm;  // [hidden]
  at::Tensor post_attention_norm;  // [hidden]
  Linear q, k, v, o;  // q [heads*head_dim, hidden], k/v [kv_heads*head_dim, hidden], o [hidden, heads*head_dim]
  Linear gate, up, down;  // gate/up [ffn, hidden], down [hidden, ffn]
  at::Tensor q_norm, k_norm;  // [head_dim] (Qwen3 only)

  // The seven linears in kLinearModules order (linear_modules.h).
  std::array<Linear*, 7> linears() { return {&q, &k, &v, &o, &gate, &up, &down}; }
  std::array<const Linear*, 7> linears() const { return {&q, &k, &v, &o, &gate, &up, &down}; }
};

class LlamaModel {
 public:
  // Reads config.json and the safetensors checkpoint of `dir`, one tensor at a time, converting each
  // straight to the requested dtype/device (same dtype on CPU stays a zero-copy view of the mmap).
  static LlamaModel load(const std::filesystem::path& dir, const LoadOptions& opts);
  // The same architecture with seeded random weights (random_init.h: benchmarks of real shapes, the
  // quick start's base); `gen` must be a generator of opts.device (weights are drawn where they live).
  static LlamaModel random(const ModelConfig& config, const LoadOptions& opts, at::Generator gen);
  // The architecture of `config` with every weight taken from `weights`, one tensor at a time.
  static LlamaModel from_weights(const ModelConfig& config, const WeightSource& weights, const LoadOptions& opts);

  const ModelConfig& config() const { return config_; }
  at::ScalarType dtype() const { return dtype_; }
  at::Device device() const { return embed_.device(); }

  // Visits every decoder-layer linear with its Hugging Face module name ("model.layers.3.mlp.up_proj").
  void for_each_linear(const std::function<void(const std::string&, Linear&)>& fn);
  void for_each_linear(const std::function<void(const std::string&, const Linear&)>& fn) const;

  // Attaches PEFT-initialised adapters (A kaiming-uniform from `gen`, B = 0) to the linears that
  // spec.targets selects (resolve_target_modules), in module order, on the model's device. In lora.cpp.
  void add_lora(const LoraSpec& spec, at::Generator gen);
  // The adapter tensors under PEFT's file names ("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"),
  // in module order (A then B); the same tensors the optimizer updates.
  std::vector<std::pair<std::string, at::Tensor>> lora_parameters() const;

  // Every weight under its Hugging Face name, 4-bit linears in the bitsandbytes layout
  // (formats.md §1.8), the rest in the model dtype: what a checkpoint writer needs.
  std::map<std::string, at::Tensor> state_tensors() const;

  // ids [batch, seq] int64 (checked against the vocabulary when on the CPU, as batches are built; ids
  // already on a device are checked in debug builds only, a check there being a device sync);
  // attention_mask [batch, seq] (1 = token, 0 = padding) or undefined;
  // positions [batch, seq] or undefined (then 0..seq-1 per row, as transformers does by default).
  // Returns logits [batch, seq, vocab] in the compute dtype.
  at::Tensor forward(const at::Tensor& ids, const at::Tensor& attention_mask = {},
                     const at::Tensor& positions = {}, const RunContext* ctx = nullptr) const;

  // Incremental decoding: ids [batch, new] int64 continue the sequences whose keys and values `cache`
  // holds (positions cache.length() .. cache.length()+new-1); the new queries attend to every cached
  // key and causally within the block, inside the sliding window if the model has one. Appends the
  // block to the cache and returns its logits [batch, new, vocab]: what forward() gives for those
  // positions of the whole sequence (tests/trainer/model/kv_cache_test.cpp), from any split into blocks.
  at::Tensor forward_cached(const at::Tensor& ids, KvCache& cache, const RunContext* ctx = nullptr) const;

  // Packed rows: segment_ids [batch, seq] (document index per token, -1 = padding) keep attention
  // inside each document (attention.h: per document, no dense mask, when they are on the host);
  // positions restart per document. Returns the final hidden states
  // [batch, seq, hidden] (the LM head is applied by the caller, so the loss can chunk it).
  at::Tensor hidden_states(const at::Tensor& ids, const at::Tensor& segment_ids, const at::Tensor& positions,
                           const RunContext* ctx = nullptr) const;
  at::Tensor lm_head(const at::Tensor& hidden) const { return at::linear(hidden, lm_head_); }

  // Layer-by-layer execution with the same ops as forward(): what export's calibration passes need
  // (GPTQ quantizes one decoder layer at a time and feeds its quantized outputs to the next).
  // embed(ids [batch, seq]) → h [batch, seq, hidden]; run_layer(i, h) → h; final_norm(h) → the input
  // of lm_head. Unpadded, causal rows with positions 0..seq-1 (calibration windows).
  struct LayerInputs {
    AttentionLayout attention;  // plain causal, or the sliding window's
    RopeTables rope;
  };
  LayerInputs layer_inputs(int64_t batch, int64_t seq) const;
  at::Tensor embed(const at::Tensor& ids) const;
  int64_t num_layers() const { return static_cast<int64_t>(layers_.size()); }
  DecoderLayer& layer(int64_t i) { return layers_.at(i); }
  const DecoderLayer& layer(int64_t i) const { return layers_.at(i); }
  at::Tensor run_layer(int64_t i, const at::Tensor& h, const LayerInputs& in, const RunContext* ctx = nullptr) const {
    return layer_forward(layers_.at(i), h, in.attention, in.rope, ctx);
  }
  at::Tensor final_norm(const at::Tensor& h) const { return rms_norm(h, final_norm_); }
  // The two halves of run_layer, each alone on its normed input (AWQ's scale search inspects the
  // attention for q/k/v and the MLP for gate/up): attention_block(i, x) = o(attention(q(x), k(x), v(x)))
  // and mlp_block(i, x) = down(silu(gate(x))·up(x)), x [batch, seq, hidden]. run_layer(i, h) is
  // h' = h + attention_block(i, norm1(h)), then h' + mlp_block(i, norm2(h')).
  at::Tensor attention_block(int64_t i, const at::Tensor& x_normed, const LayerInputs& in, const RunContext* ctx = nullptr) const {
    return attention(layers_.at(i), x_normed, in.attention, in.rope, ctx);
  }
  at::Tensor mlp_block(int64_t i, const at::Tensor& x_normed, const RunContext* ctx = nullptr) const {
    return mlp(layers_.at(i), x_normed, ctx);
  }

 private:
  // The one attention of the model, for training, layer-by-layer runs and cached decoding alike.
  // x [batch, new, hidden]; rope: the tables of the new tokens' positions; attn: which keys each query
  // sees (attention.h), decided once per forward. With `cache`, the block's keys and values are
  // appended to layer `layer_index` of it first and the queries attend to all of its keys under
  // AttentionLayout::for_cache.
  at::Tensor attention(const DecoderLayer& l, const at::Tensor& x, const AttentionLayout& attn, const RopeTables& rope,
                       const RunContext* ctx, KvCache* cache = nullptr, int64_t layer_index = 0) const;
  at::Tensor mlp(const DecoderLayer& l, const at::Tensor& x, const RunContext* ctx) const;  // SwiGLU
  at::Tensor layer_forward(const DecoderLayer& l, const at::Tensor& h, const AttentionLayout& attn, const RopeTables& rope,
                           const RunContext* ctx, KvCache* cache = nullptr, int64_t layer_index = 0) const;
  at::Tensor run_layers(at::Tensor h, const AttentionLayout& attn, const RopeTables& rope, const RunContext* ctx) const;
  at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight) const;

  ModelConfig config_;
  at::ScalarType dtype_ = at::kFloat;
  at::Tensor embed_;    // [vocab, hidden]
  std::vector<DecoderLayer> layers_;
  at::Tensor final_norm_;  // [hidden]
  at::Tensor lm_head_;     // [vocab, hidden]; the embedding itself when tied
  at::Tensor inv_freq_;    // [head_dim/2] float32
};

}  // namespace qtrain
