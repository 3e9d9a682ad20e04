// The keys and values of every decoder layer for the tokens a model has already seen, so incremental
// decoding (LlamaModel::forward_cached) runs each new token through the layers once instead of the
// whole sequence again. Keys are stored after RoPE (and Qwen3's k norm), values as projected, both in
// the model's compute dtype: exactly the tensors forward() feeds to SDPA for those positions.
//
// Storage is one buffer per layer [batch, kv_heads, capacity, head_dim] that grows by doubling, so a
// decoding step writes one slice instead of concatenating the whole history. Every row has the same
// length (no padding inside the cache): generation runs one sequence, or a batch of equal prompts.
// Keys beyond a sliding window are kept; the attention mask hides them (memory, not correctness).
#pragma once

#include <cstdint>
#include <vector>

#include <ATen/ATen.h>

#include "data/io/hf_config.h"

namespace qtrain {

class KvCache {
 public:
  // An empty cache for `config`'s layers; `capacity` tokens are allocated up front (0: on first use).
  KvCache(const ModelConfig& config, int64_t batch, at::ScalarType dtype, at::Device device, int64_t capacity = 0);

  int64_t length() const { return length_; }  // tokens cached per row (the next token's position)
  int64_t batch() const { return batch_; }
  int64_t num_layers() const { return static_cast<int64_t>(keys_.size()); }

  // Appends the new block's k/v [batch, kv_heads, new, head_dim] of `layer` at positions
  // length() .. length()+new-1 and returns every cached key and value of that layer
  // [batch, kv_heads, length()+new, head_dim] (views of the buffers). The length moves on only in
  // advance(new), after every layer appended the same block.
  std::pair<at::Tensor, at::Tensor> append(int64_t layer, const at::Tensor& k, const at::Tensor& v);
  void advance(int64_t new_tokens);

 private:
  void reserve(int64_t tokens);

  int64_t batch_, kv_heads_, head_dim_;
  at::TensorOptions options_;
  int64_t length_ = 0;
  int64_t pending_ = 0;  // the block appended since the last advance()
  int64_t capacity_ = 0;
  std::vector<at::Tensor> keys_, values_;  // per layer [batch, kv_heads, capacity, head_dim]
};

}  // namespace qtrain
