#include "trainer/model/model.h"

#include <string>
#include <tuple>

#include "data/error.h"
#include "data/io/bnb_format.h"
#include "data/io/safetensors.h"
#include "trainer/model/attention_mask.h"
#include "trainer/model/checkpoint_weights.h"
#include "trainer/model/host_to_device.h"
#include "trainer/model/linear_modules.h"
#include "trainer/model/random_init.h"
#include "trainer/model/recompute.h"
#include "trainer/model/rope.h"

namespace qtrain {
namespace fs = std::filesystem;

namespace {

void check_dtype(const LoadOptions& opts) {
  if (opts.dtype != at::kFloat && opts.dtype != at::kBFloat16 && opts.dtype != at::kHalf)
    throw UsageError(std::string("model dtype must be float32, bfloat16 or float16, not ") + c10::toString(opts.dtype));
}

// DecoderLayer::linears() and kLinearModules must agree on the order.
static_assert(kLinearModules[0].name == "q_proj" && kLinearModules[1].name == "k_proj" &&
              kLinearModules[2].name == "v_proj" && kLinearModules[3].name == "o_proj" &&
              kLinearModules[4].name == "gate_proj" && kLinearModules[5].name == "up_proj" &&
              kLinearModules[6].name == "down_proj");

}  // namespace

LlamaModel LlamaModel::load(const fs::path& dir, const LoadOptions& opts) {
  check_dtype(opts);
  const auto ckpt = safetensors::Checkpoint::open(dir);
  return from_weights(parse_model_config(dir / "config.json"), *checkpoint_weights(ckpt, opts), opts);
}

LlamaModel LlamaModel::random(const ModelConfig& config, const LoadOptions& opts, at::Generator gen) {
  check_dtype(opts);
  return from_weights(config, *random_weights(opts, std::move(gen)), opts);
}

LlamaModel LlamaModel::from_weights(const ModelConfig& config, const WeightSource& w, const LoadOptions& opts) {
  check_dtype(opts);
  LlamaModel m;
  m.config_ = config;
  m.dtype_ = opts.dtype;
  const ModelConfig& c = m.config_;

  // Per linear in kLinearModules order: {out, in} and whether it has a bias.
  const bool qkv_bias = c.attention_bias || c.qkv_bias;
  const std::array<std::array<int64_t, 2>, 7> shapes = {{{c.q_dim(), c.hidden_size},
                                                         {c.kv_dim(), c.hidden_size},
                                                         {c.kv_dim(), c.hidden_size},
                                                         {c.hidden_size, c.q_dim()},
                                                         {c.intermediate_size, c.hidden_size},
                                                         {c.intermediate_size, c.hidden_size},
                                                         {c.hidden_size, c.intermediate_size}}};
  const std::array<bool, 7> biases = {qkv_bias, qkv_bias, qkv_bias, c.attention_bias, c.mlp_bias, c.mlp_bias, c.mlp_bias};

  m.embed_ = w.get("model.embed_tokens.weight", {c.vocab_size, c.hidden_size});
  ProgressLine progress(opts.console, opts.quantize ? "loading the base, quantizing to 4 bits" : "loading the model",
                        c.num_hidden_layers, "layers");
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    progress.update(i);
    const std::string p = "model.layers." + std::to_string(i);
    DecoderLayer l;
    l.input_norm = w.get(p + ".input_layernorm.weight", {c.hidden_size});
    l.post_attention_norm = w.get(p + ".post_attention_layernorm.weight", {c.hidden_size});
    const auto linears = l.linears();
    for (std::size_t j = 0; j < kLinearModules.size(); ++j)
      *linears[j] = w.linear(p + "." + std::string(kLinearModules[j].path), shapes[j][0], shapes[j][1], biases[j]);
    if (c.qk_norm) {
      l.q_norm = w.get(p + ".self_attn.q_norm.weight", {c.head_dim});
      l.k_norm = w.get(p + ".self_attn.k_norm.weight", {c.head_dim});
    }
    m.layers_.push_back(std::move(l));
  }
  progress.finish();
  m.final_norm_ = w.get("model.norm.weight", {c.hidden_size});
  if (c.tie_word_embeddings) {
    m.lm_head_ = m.embed_;
  } else {
    m.lm_head_ = w.get("lm_head.weight", {c.vocab_size, c.hidden_size});
  }
  m.inv_freq_ = rope_inv_freq(c.rope, c.head_dim).to(opts.device);
  return m;
}

void LlamaModel::for_each_linear(const std::function<void(const std::string&, Linear&)>& fn) {
  for (std::size_t i = 0; i < layers_.size(); ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    const auto linears = layers_[i].linears();
    for (std::size_t j = 0; j < kLinearModules.size(); ++j) fn(p + std::string(kLinearModules[j].path), *linears[j]);
  }
}

void LlamaModel::for_each_linear(const std::function<void(const std::string&, const Linear&)>& fn) const {
  const_cast<LlamaModel*>(this)->for_each_linear([&](const std::string& n, Linear& l) { fn(n, l); });
}

std::map<std::string, at::Tensor> LlamaModel::state_tensors() const {
  std::map<std::string, at::Tensor> out;
  out["model.embed_tokens.weight"] = embed_;
  out["model.norm.weight"] = final_norm_;
  if (!config_.tie_word_embeddings) out["lm_head.weight"] = lm_head_;
  for (std::size_t i = 0; i < layers_.size(); ++i) {
    const DecoderLayer& l = layers_[i];
    const std::string p = "model.layers." + std::to_string(i);
    out[p + ".input_layernorm.weight"] = l.input_norm;
    out[p + ".post_attention_layernorm.weight"] = l.post_attention_norm;
    if (config_.qk_norm) {
      out[p + ".self_attn.q_norm.weight"] = l.q_norm;
      out[p + ".self_attn.k_norm.weight"] = l.k_norm;
    }
  }
  for_each_linear([&](const std::string& name, const Linear& l) {
    if (l.qweight) {
      for (auto& [k, t] : bnb::to_tensors(name + ".weight", *l.qweight)) out[k] = t;
    } else {
      out[name + ".weight"] = l.weight;
    }
    if (l.bias.defined()) out[name + ".bias"] = l.bias;
  });
  return out;
}

at::Tensor LlamaModel::rms_norm(const at::Tensor& x, const at::Tensor& weight) const {
  // transformers' LlamaRMSNorm: normalise in float32, cast back, then scale in the weight dtype.
  at::Tensor xf = x.to(at::kFloat);
  at::Tensor var = xf.pow(2).mean(-1, /*keepdim=*/true);
  xf = xf * at::rsqrt(var + config_.rms_norm_eps);
  return weight * xf.to(x.scalar_type());
}

at::Tensor LlamaModel::attention(const DecoderLayer& l, const at::Tensor& x, const AttentionLayout& attn,
                                 const RopeTables& rope, const RunContext* ctx, KvCache* cache, int64_t layer_index) const {
  const ModelConfig& c = config_;
  const int64_t b = x.size(0), t = x.size(1);
  // [batch, seq, heads*hd] → [batch, heads, seq, hd]
  at::Tensor q = l.q.forward(x, ctx).view({b, t, c.num_attention_heads, c.head_dim});
  at::Tensor k = l.k.forward(x, ctx).view({b, t, c.num_key_value_heads, c.head_dim});
  at::Tensor v = l.v.forward(x, ctx).view({b, t, c.num_key_value_heads, c.head_dim}).transpose(1, 2);
  if (c.qk_norm) {
    q = rms_norm(q, l.q_norm);
    k = rms_norm(k, l.k_norm);
  }
  q = apply_rope(q.transpose(1, 2), rope);
  k = apply_rope(k.transpose(1, 2), rope);
  if (cache) std::tie(k, v) = cache->append(layer_index, k, v);  // [batch, kv_heads, cached+seq, hd]
  // Plain causal rows take SDPA's is_causal (flash on CUDA, as transformers for unpadded batches);
  // packed and padded rows attend per document (varlen flash on CUDA); decoding uses its cache mask.
  at::Tensor out = attend(q, k, v, attn);  // [batch, heads, seq, hd]
  // [batch, heads, seq, hd] → [batch, seq, heads*hd]
  out = out.transpose(1, 2).reshape({b, t, c.q_dim()});
  return l.o.forward(out, ctx);
}

at::Tensor LlamaModel::layer_forward(const DecoderLayer& l, const at::Tensor& h, const AttentionLayout& attn,
                                     const RopeTables& rope, const RunContext* ctx, KvCache* cache, int64_t layer_index) const {
  at::Tensor out = h + attention(l, rms_norm(h, l.input_norm), attn, rope, ctx, cache, layer_index);
  return out + mlp(l, rms_norm(out, l.post_attention_norm), ctx);
}

at::Tensor LlamaModel::mlp(const DecoderLayer& l, const at::Tensor& x, const RunContext* ctx) const {
  return l.down.forward(at::silu(l.gate.forward(x, ctx)) * l.up.forward(x, ctx), ctx);
}

at::Tensor LlamaModel::run_layers(at::Tensor h, const AttentionLayout& attn, const RopeTables& rope, const RunContext* ctx) const {
  const bool recompute = ctx && ctx->recompute && at::GradMode::is_enabled();
  for (const auto& l : layers_) {
    if (!recompute) {
      h = layer_forward(l, h, attn, rope, ctx);
      continue;
    }
    std::vector<at::Tensor> params;
    for (const Linear* lin : l.linears())
      if (lin->lora) params.insert(params.end(), {lin->lora->A, lin->lora->B});
    // Captures by value (the layout's plan and cos/sin tables are shared): backward runs after this returns.
    const DecoderLayer* lp = &l;
    h = recompute_layer([this, lp, attn, rope](const at::Tensor& x, const RunContext* c) { return layer_forward(*lp, x, attn, rope, c); },
                        h, params, ctx);
  }
  return h;
}

namespace {
// Token ids outside the vocabulary would index past the embedding (a device-side assert on CUDA).
// Checked where it costs no device sync: on the host, where batches are built; ids already on a
// device are checked in debug builds only.
void check_ids(const at::Tensor& ids, int64_t vocab) {
  TORCH_CHECK(ids.dim() == 2, "forward: ids must be [batch, seq], got ", ids.sizes());
  TORCH_CHECK(ids.scalar_type() == at::kLong, "forward: ids must be int64, got ", ids.scalar_type());
#ifdef NDEBUG
  if (!ids.device().is_cpu()) return;
#endif
  if (ids.numel() > 0) {
    const auto [lo_t, hi_t] = at::aminmax(ids);
    const int64_t lo = lo_t.item<int64_t>(), hi = hi_t.item<int64_t>();
    if (lo < 0 || hi >= vocab)
      throw UsageError("token id " + std::to_string(lo < 0 ? lo : hi) + " is outside the vocabulary [0, " +
                       std::to_string(vocab) + ")");
  }
}
}  // namespace

at::Tensor LlamaModel::forward(const at::Tensor& ids, const at::Tensor& attention_mask, const at::Tensor& positions,
                               const RunContext* ctx) const {
  check_ids(ids, config_.vocab_size);
  const int64_t b = ids.size(0), t = ids.size(1);
  at::Tensor pos = positions.defined() ? host_to_device(positions, device()).to(at::kLong)
                                       : at::arange(t, at::TensorOptions().dtype(at::kLong).device(device())).expand({b, t});
  const RopeTables rope = rope_tables(inv_freq_, pos, dtype_);
  const at::Tensor seg = attention_mask.defined() ? segment_ids_from_padding(attention_mask) : at::Tensor();
  const AttentionLayout attn = AttentionLayout::for_rows(seg, b, t, config_.sliding_window, device());
  at::Tensor h = run_layers(at::embedding(embed_, host_to_device(ids, device())), attn, rope, ctx);  // [batch, seq, hidden]
  return lm_head(rms_norm(h, final_norm_));  // [batch, seq, vocab]
}

at::Tensor LlamaModel::forward_cached(const at::Tensor& ids, KvCache& cache, const RunContext* ctx) const {
  check_ids(ids, config_.vocab_size);
  TORCH_CHECK(cache.batch() == ids.size(0) && cache.num_layers() == num_layers(), "forward_cached: the cache holds ",
              cache.batch(), " rows of ", cache.num_layers(), " layers; ids are ", ids.sizes(), " for ", num_layers(),
              " layers");
  const int64_t b = ids.size(0), t = ids.size(1), past = cache.length();
  const at::Tensor pos =
      at::arange(past, past + t, at::TensorOptions().dtype(at::kLong).device(device())).expand({b, t});
  const RopeTables rope = rope_tables(inv_freq_, pos, dtype_);
  const AttentionLayout attn =
      AttentionLayout::for_cache(build_cached_attention_mask(past, t, config_.sliding_window, device()), past, t);
  at::Tensor h = at::embedding(embed_, host_to_device(ids, device()));  // [batch, new, hidden]
  for (int64_t i = 0; i < num_layers(); ++i) h = layer_forward(layers_[i], h, attn, rope, ctx, &cache, i);
  cache.advance(t);
  return lm_head(rms_norm(h, final_norm_));  // [batch, new, vocab]
}

LlamaModel::LayerInputs LlamaModel::layer_inputs(int64_t batch, int64_t seq) const {
  const at::Tensor pos = at::arange(seq, at::TensorOptions().dtype(at::kLong).device(device())).expand({batch, seq});
  return {AttentionLayout::for_rows({}, batch, seq, config_.sliding_window, device()), rope_tables(inv_freq_, pos, dtype_)};
}

at::Tensor LlamaModel::embed(const at::Tensor& ids) const {
  check_ids(ids, config_.vocab_size);
  return at::embedding(embed_, host_to_device(ids, device()));
}

at::Tensor LlamaModel::hidden_states(const at::Tensor& ids, const at::Tensor& segment_ids, const at::Tensor& positions,
                                     const RunContext* ctx) const {
  check_ids(ids, config_.vocab_size);
  TORCH_CHECK(segment_ids.sizes() == ids.sizes() && positions.sizes() == ids.sizes(),
              "hidden_states: segment_ids and positions must be [batch, seq] like ids ", ids.sizes(), ", got ",
              segment_ids.sizes(), " and ", positions.sizes());
  const RopeTables rope = rope_tables(inv_freq_, host_to_device(positions, device()).to(at::kLong), dtype_);
  // From the segment ids where the loader made them (the host): the causal fast path or the per-document
  // plan without a device sync.
  const AttentionLayout attn = AttentionLayout::for_rows(segment_ids, ids.size(0), ids.size(1), config_.sliding_window, device());
  at::Tensor h = run_layers(at::embedding(embed_, host_to_device(ids, device())), attn, rope, ctx);
  return rms_norm(h, final_norm_);
}

}  // namespace qtrain
