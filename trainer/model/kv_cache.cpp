#include "trainer/model/kv_cache.h"

#include <algorithm>

namespace qtrain {

KvCache::KvCache(const ModelConfig& config, int64_t batch, at::ScalarType dtype, at::Device device, int64_t capacity)
    : batch_(batch),
      kv_heads_(config.num_key_value_heads),
      head_dim_(config.head_dim),
      options_(at::TensorOptions().dtype(dtype).device(device)),
      keys_(config.num_hidden_layers),
      values_(config.num_hidden_layers) {
  TORCH_CHECK(batch > 0, "KvCache: batch must be positive, got ", batch);
  TORCH_CHECK(capacity >= 0, "KvCache: capacity must be >= 0, got ", capacity);
  if (capacity > 0) reserve(capacity);
}

void KvCache::reserve(int64_t tokens) {
  if (tokens <= capacity_) return;
  // Doubling keeps the copies of a long generation linear in its length.
  const int64_t cap = std::max(tokens, 2 * capacity_);
  for (auto* buffers : {&keys_, &values_})
    for (auto& b : *buffers) {
      at::Tensor grown = at::empty({batch_, kv_heads_, cap, head_dim_}, options_);
      if (b.defined() && length_ > 0) grown.narrow(2, 0, length_).copy_(b.narrow(2, 0, length_));
      b = std::move(grown);
    }
  capacity_ = cap;
}

std::pair<at::Tensor, at::Tensor> KvCache::append(int64_t layer, const at::Tensor& k, const at::Tensor& v) {
  TORCH_CHECK(layer >= 0 && layer < num_layers(), "KvCache: layer ", layer, " of ", num_layers());
  const std::vector<int64_t> expected{batch_, kv_heads_, k.dim() == 4 ? k.size(2) : 0, head_dim_};
  TORCH_CHECK(k.sizes() == at::IntArrayRef(expected) && v.sizes() == at::IntArrayRef(expected),
              "KvCache: k/v must be [batch, kv_heads, new, head_dim] = ", expected, ", got ", k.sizes(), " and ", v.sizes());
  const int64_t n = k.size(2), total = length_ + n;
  TORCH_CHECK(pending_ == 0 || pending_ == n, "KvCache: layer ", layer, " appends ", n, " tokens, another layer ", pending_);
  pending_ = n;
  reserve(total);
  keys_[layer].narrow(2, length_, n).copy_(k);
  values_[layer].narrow(2, length_, n).copy_(v);
  return {keys_[layer].narrow(2, 0, total), values_[layer].narrow(2, 0, total)};
}

void KvCache::advance(int64_t new_tokens) {
  TORCH_CHECK(new_tokens == pending_, "KvCache: advance(", new_tokens, ") after appending blocks of ", pending_, " tokens");
  length_ += new_tokens;
  pending_ = 0;
}

}  // namespace qtrain
