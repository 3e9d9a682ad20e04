#include "trainer/model/model.h"

#include <algorithm>
#include <string>

#include "data/dataset/batching.h"
#include "data/error.h"
#include "data/io/safetensors.h"
#include "ops/qlora_linear.h"
#include "data/io/bnb_format.h"
#include "trainer/model/recompute.h"
#include "trainer/model/rope.h"

namespace qtrain {
namespace fs = std::filesystem;

at::Tensor Linear::dense_weight(at::ScalarType dtype) const {
  return qweight ? ops::dequantize_4bit(*qweight, dtype) : weight.to(dtype);
}

at::Tensor Linear::forward(const at::Tensor& x, const RunContext* ctx) const {
  if (!lora) {
    // The dequantized weight is a temporary: it dies with this call (the QLoRA memory point).
    return at::linear(x, qweight ? ops::dequantize_4bit(*qweight, x.scalar_type()) : weight, bias);
  }
  at::Tensor mask;  // like x; drawn from the context's generator so recompute can replay it
  if (ctx && ctx->training && lora->dropout > 0) {
    TORCH_CHECK(ctx->dropout_gen.defined(), "LoRA dropout needs RunContext::dropout_gen");
    // From the run's generator (on the training device) so recompute and resume replay it exactly; in
    // the adapter dtype, so 1/(1-p) and x·mask are not rounded to bf16 (PEFT applies dropout after
    // casting x to the LoRA dtype).
    mask = ops::lora_dropout_mask(x.sizes(), lora->dropout, ctx->dropout_gen, lora->A.scalar_type()).to(x.device());
  }
  if (qweight) {
    ops::QLoraLinearArgs a;
    a.weight = &*qweight;
    a.bias = bias;
    a.A = lora->A;
    a.B = lora->B;
    a.scale = lora->scale;
    a.dropout_mask = mask;
    return ops::qlora_linear(x, a);
  }
  // Dense base (quantization off): PEFT's LoRA forward with plain autograd ops. The LoRA branch runs
  // in the adapter dtype and the sum is cast back to the base output dtype.
  at::Tensor base = at::linear(x, weight, bias);
  at::Tensor xl = (mask.defined() ? x * mask : x).to(lora->A.scalar_type());
  return (base + at::linear(at::linear(xl, lora->A), lora->B) * lora->scale).to(base.scalar_type());
}

// Where a model's weights come from: a checkpoint, or a seeded generator (benchmarks of real shapes).
class WeightSource {
 public:
  virtual ~WeightSource() = default;
  virtual at::Tensor get(const std::string& name, const std::vector<int64_t>& shape) const = 0;
  virtual Linear linear(const std::string& prefix, int64_t out, int64_t in, bool bias) const = 0;
};

namespace {

// Loads named tensors from a checkpoint, checking shapes against the config.
class WeightLoader final : public WeightSource {
 public:
  WeightLoader(const safetensors::Checkpoint& ckpt, const LoadOptions& opts) : ckpt_(ckpt), opts_(opts) {}

  // Throws unless the checkpoint holds `name` with exactly `shape`.
  void check(const std::string& name, const std::vector<int64_t>& shape) const {
    if (!ckpt_.contains(name))
      throw InputError(ckpt_.dir().string() + ": checkpoint is missing tensor '" + name + "' (expected shape " +
                       shape_str(shape) + ")");
    const auto& info = ckpt_.info(name);
    if (info.shape != shape)
      throw InputError(ckpt_.dir().string() + ": tensor '" + name + "' has shape " + shape_str(info.shape) +
                       " but config.json implies " + shape_str(shape));
  }
  at::Tensor get(const std::string& name, const std::vector<int64_t>& shape) const override {
    check(name, shape);
    // Same dtype on CPU: `to` returns the mmapped view itself, so no copy is made.
    return ckpt_.tensor(name).to(opts_.device, opts_.dtype);
  }
  Linear linear(const std::string& prefix, int64_t out, int64_t in, bool bias) const override {
    Linear l;
    const std::string w = prefix + ".weight";
    if (bnb::is_quantized(ckpt_, w)) {
      l.qweight = bnb::load(ckpt_, w, opts_.device);
      if (l.qweight->shape != std::vector<int64_t>{out, in})
        throw InputError(ckpt_.dir().string() + ": 4-bit tensor '" + w + "' has shape " + shape_str(l.qweight->shape) +
                         " but config.json implies " + shape_str({out, in}));
    } else if (opts_.quantize) {
      // One full-precision tensor at a time: read from the mmap, quantize on the target device.
      check(w, {out, in});
      l.qweight = ops::quantize_4bit(ckpt_.tensor(w).to(opts_.device), *opts_.quantize);
    } else {
      l.weight = get(w, {out, in});
    }
    if (bias) l.bias = get(prefix + ".bias", {out});
    return l;
  }

 private:
  static std::string shape_str(const std::vector<int64_t>& s) {
    std::string out = "[";
    for (std::size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
    return out + "]";
  }
  const safetensors::Checkpoint& ckpt_;
  const LoadOptions& opts_;
};

// Random weights at scales that keep activations O(1): norms 1, embeddings N(0, 1), linears
// N(0, 1/in) drawn on the target device one at a time (quantized right away when asked).
class RandomWeights final : public WeightSource {
 public:
  RandomWeights(const LoadOptions& opts, at::Generator gen) : opts_(opts), gen_(std::move(gen)) {}
  at::Tensor get(const std::string& name, const std::vector<int64_t>& shape) const override {
    const auto o = at::TensorOptions().dtype(opts_.dtype).device(opts_.device);
    if (name.find("norm") != std::string::npos) return at::ones(shape, o);
    // The LM head reads unit-RMS hidden states: 1/sqrt(hidden) keeps the logits O(1).
    const double std = name.find("lm_head") != std::string::npos ? 1.0 / std::sqrt(static_cast<double>(shape.back())) : 1.0;
    return at::normal(0.0, std, shape, gen_, o.dtype(at::kFloat)).to(opts_.dtype);
  }
  Linear linear(const std::string& prefix, int64_t out, int64_t in, bool bias) const override {
    Linear l;
    const auto o = at::TensorOptions().dtype(at::kFloat).device(opts_.device);
    at::Tensor w = at::normal(0.0, 1.0 / std::sqrt(static_cast<double>(in)), {out, in}, gen_, o).to(opts_.dtype);
    if (opts_.quantize) l.qweight = ops::quantize_4bit(w, *opts_.quantize);
    else l.weight = w;
    if (bias) l.bias = at::zeros({out}, o.dtype(opts_.dtype));
    return l;
  }

 private:
  const LoadOptions& opts_;
  at::Generator gen_;
};

void check_dtype(const LoadOptions& opts) {
  if (opts.dtype != at::kFloat && opts.dtype != at::kBFloat16 && opts.dtype != at::kHalf)
    throw UsageError(std::string("model dtype must be float32, bfloat16 or float16, not ") + c10::toString(opts.dtype));
}

}  // namespace

LlamaModel LlamaModel::load(const fs::path& dir, const LoadOptions& opts) {
  check_dtype(opts);
  const auto ckpt = safetensors::Checkpoint::open(dir);
  return build(parse_model_config(dir / "config.json"), WeightLoader(ckpt, opts), opts);
}

LlamaModel LlamaModel::random(const ModelConfig& config, const LoadOptions& opts, at::Generator gen) {
  check_dtype(opts);
  return build(config, RandomWeights(opts, std::move(gen)), opts);
}

LlamaModel LlamaModel::build(const ModelConfig& config, const WeightSource& w, const LoadOptions& opts) {
  LlamaModel m;
  m.config_ = config;
  m.dtype_ = opts.dtype;
  const ModelConfig& c = m.config_;

  m.embed_ = w.get("model.embed_tokens.weight", {c.vocab_size, c.hidden_size});
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i);
    DecoderLayer l;
    l.input_norm = w.get(p + ".input_layernorm.weight", {c.hidden_size});
    l.post_attention_norm = w.get(p + ".post_attention_layernorm.weight", {c.hidden_size});
    const bool qkv_bias = c.attention_bias || c.qkv_bias;
    l.q = w.linear(p + ".self_attn.q_proj", c.q_dim(), c.hidden_size, qkv_bias);
    l.k = w.linear(p + ".self_attn.k_proj", c.kv_dim(), c.hidden_size, qkv_bias);
    l.v = w.linear(p + ".self_attn.v_proj", c.kv_dim(), c.hidden_size, qkv_bias);
    l.o = w.linear(p + ".self_attn.o_proj", c.hidden_size, c.q_dim(), c.attention_bias);
    if (c.qk_norm) {
      l.q_norm = w.get(p + ".self_attn.q_norm.weight", {c.head_dim});
      l.k_norm = w.get(p + ".self_attn.k_norm.weight", {c.head_dim});
    }
    l.gate = w.linear(p + ".mlp.gate_proj", c.intermediate_size, c.hidden_size, c.mlp_bias);
    l.up = w.linear(p + ".mlp.up_proj", c.intermediate_size, c.hidden_size, c.mlp_bias);
    l.down = w.linear(p + ".mlp.down_proj", c.hidden_size, c.intermediate_size, c.mlp_bias);
    m.layers_.push_back(std::move(l));
  }
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
    DecoderLayer& l = layers_[i];
    const std::string p = "model.layers." + std::to_string(i);
    fn(p + ".self_attn.q_proj", l.q);
    fn(p + ".self_attn.k_proj", l.k);
    fn(p + ".self_attn.v_proj", l.v);
    fn(p + ".self_attn.o_proj", l.o);
    fn(p + ".mlp.gate_proj", l.gate);
    fn(p + ".mlp.up_proj", l.up);
    fn(p + ".mlp.down_proj", l.down);
  }
}

void LlamaModel::for_each_linear(const std::function<void(const std::string&, const Linear&)>& fn) const {
  const_cast<LlamaModel*>(this)->for_each_linear([&](const std::string& n, Linear& l) { fn(n, l); });
}

void LlamaModel::add_lora(const LoraSpec& spec, at::Generator gen) {
  const bool all = std::find(spec.targets.begin(), spec.targets.end(), "all-linear") != spec.targets.end();
  for_each_linear([&](const std::string& name, Linear& l) {
    const std::string shortname = name.substr(name.rfind('.') + 1);
    if (!all && std::find(spec.targets.begin(), spec.targets.end(), shortname) == spec.targets.end()) return;
    const auto shape = l.qweight ? l.qweight->shape : l.weight.sizes().vec();  // [out, in]
    ops::LoraWeights w = ops::init_lora(shape[1], shape[0], spec.config, gen, spec.dtype);
    auto a = std::make_shared<LoraAdapter>();
    a->A = w.A.to(device()).set_requires_grad(true);
    a->B = w.B.to(device()).set_requires_grad(true);
    a->scale = ops::lora_scale(spec.config);
    a->dropout = spec.config.dropout;
    l.lora = std::move(a);
  });
}

std::vector<std::pair<std::string, at::Tensor>> LlamaModel::lora_parameters() const {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for_each_linear([&](const std::string& name, const Linear& l) {
    if (!l.lora) return;
    out.emplace_back("base_model.model." + name + ".lora_A.weight", l.lora->A);
    out.emplace_back("base_model.model." + name + ".lora_B.weight", l.lora->B);
  });
  return out;
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

at::Tensor LlamaModel::attention(const DecoderLayer& l, const at::Tensor& x, const at::Tensor& mask,
                                 const RopeTables& rope, const RunContext* ctx) const {
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
  // No explicit mask means plain causal attention: is_causal lets SDPA pick its fastest kernel
  // (flash on CUDA) and is what transformers does for unpadded batches.
  at::Tensor out = at::scaled_dot_product_attention(
      q, k, v, mask.defined() ? std::optional<at::Tensor>(mask) : std::nullopt, /*dropout_p=*/0.0, /*is_causal=*/!mask.defined(),
                                                    /*scale=*/std::nullopt, /*enable_gqa=*/true);
  // [batch, heads, seq, hd] → [batch, seq, heads*hd]
  out = out.transpose(1, 2).reshape({b, t, c.q_dim()});
  return l.o.forward(out, ctx);
}

at::Tensor LlamaModel::layer_forward(const DecoderLayer& l, const at::Tensor& h, const at::Tensor& mask,
                                     const RopeTables& rope, const RunContext* ctx) const {
  at::Tensor out = h + attention(l, rms_norm(h, l.input_norm), mask, rope, ctx);
  at::Tensor x = rms_norm(out, l.post_attention_norm);
  return out + l.down.forward(at::silu(l.gate.forward(x, ctx)) * l.up.forward(x, ctx), ctx);
}

at::Tensor LlamaModel::run_layers(at::Tensor h, const at::Tensor& mask, const RopeTables& rope, const RunContext* ctx) const {
  const bool recompute = ctx && ctx->recompute && at::GradMode::is_enabled();
  for (const auto& l : layers_) {
    if (!recompute) {
      h = layer_forward(l, h, mask, rope, ctx);
      continue;
    }
    std::vector<at::Tensor> params;
    for (const Linear* lin : {&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down})
      if (lin->lora) params.insert(params.end(), {lin->lora->A, lin->lora->B});
    // Captures by value (mask and cos/sin tables are shared tensors): backward runs after this returns.
    const DecoderLayer* lp = &l;
    h = recompute_layer([this, lp, mask, rope](const at::Tensor& x, const RunContext* c) { return layer_forward(*lp, x, mask, rope, c); },
                        h, params, ctx);
  }
  return h;
}

namespace {
void check_ids(const at::Tensor& ids, int64_t vocab) {
  TORCH_CHECK(ids.dim() == 2, "forward: ids must be [batch, seq], got ", ids.sizes());
  TORCH_CHECK(ids.scalar_type() == at::kLong, "forward: ids must be int64, got ", ids.scalar_type());
  if (ids.numel() > 0) {
    const int64_t lo = ids.min().item<int64_t>(), hi = ids.max().item<int64_t>();
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
  at::Tensor pos = positions.defined() ? positions.to(device(), at::kLong)
                                       : at::arange(t, at::TensorOptions().dtype(at::kLong).device(device())).expand({b, t});
  const RopeTables rope = rope_tables(inv_freq_, pos, dtype_);
  const auto window = config_.sliding_window && *config_.sliding_window < t ? config_.sliding_window : std::nullopt;
  const at::Tensor mask = build_attention_mask(attention_mask, b, t, window, device());
  at::Tensor h = run_layers(at::embedding(embed_, ids.to(device())), mask, rope, ctx);  // [batch, seq, hidden]
  return lm_head(rms_norm(h, final_norm_));  // [batch, seq, vocab]
}

at::Tensor LlamaModel::hidden_states(const at::Tensor& ids, const at::Tensor& segment_ids, const at::Tensor& positions,
                                     const RunContext* ctx) const {
  check_ids(ids, config_.vocab_size);
  TORCH_CHECK(segment_ids.sizes() == ids.sizes() && positions.sizes() == ids.sizes(),
              "hidden_states: segment_ids and positions must be [batch, seq] like ids ", ids.sizes(), ", got ",
              segment_ids.sizes(), " and ", positions.sizes());
  const RopeTables rope = rope_tables(inv_freq_, positions.to(device(), at::kLong), dtype_);
  // One document per row and no padding is plain causal attention: no mask, so SDPA can take its
  // is_causal kernels (flash on CUDA), as transformers does for such batches.
  const at::Tensor seg = segment_ids.to(device());
  // A window no shorter than the row changes nothing: leave it out so the causal fast path stays open.
  const auto window = config_.sliding_window && *config_.sliding_window < seg.size(1) ? config_.sliding_window : std::nullopt;
  const bool plain = !window && seg.numel() > 0 && seg.min().item<int64_t>() == 0 && seg.max().item<int64_t>() == 0;
  const at::Tensor mask = plain ? at::Tensor() : build_segment_mask(seg, window);
  at::Tensor h = run_layers(at::embedding(embed_, ids.to(device())), mask, rope, ctx);
  return rms_norm(h, final_norm_);
}

at::Tensor build_attention_mask(const at::Tensor& attention_mask, int64_t batch, int64_t seq,
                                std::optional<int64_t> sliding_window, at::Device device) {
  if (!attention_mask.defined() && !sliding_window) return {};  // plain causal: SDPA's is_causal
  auto opts = at::TensorOptions().dtype(at::kLong).device(device);
  at::Tensor qi = at::arange(seq, opts).view({seq, 1});
  at::Tensor kj = at::arange(seq, opts).view({1, seq});
  at::Tensor allowed = kj <= qi;  // [seq, seq] causal
  if (sliding_window) allowed = allowed.logical_and(kj > qi - *sliding_window);
  allowed = allowed.view({1, 1, seq, seq}).expand({batch, 1, seq, seq});
  if (!attention_mask.defined()) return allowed.contiguous();
  TORCH_CHECK(attention_mask.sizes() == at::IntArrayRef({batch, seq}), "attention_mask must be [batch, seq] = [", batch,
              ", ", seq, "], got ", attention_mask.sizes());
  at::Tensor valid = attention_mask.to(device).to(at::kBool);  // [batch, seq]
  allowed = allowed.logical_and(valid.view({batch, 1, 1, seq}));
  at::Tensor diag = at::eye(seq, at::TensorOptions().dtype(at::kBool).device(device)).view({1, 1, seq, seq});
  at::Tensor pad_query = valid.logical_not().view({batch, 1, seq, 1});
  return allowed.logical_or(diag.logical_and(pad_query)).contiguous();
}

}  // namespace qtrain

namespace qtrain {

at::Tensor build_segment_mask(const at::Tensor& segment_ids, std::optional<int64_t> sliding_window) {
  // Same document and causal (data/dataset/batching.h owns that rule), narrowed to the window if the model has one.
  at::Tensor allowed = segment_attention_mask(segment_ids);  // [b, 1, t, t]
  if (!sliding_window) return allowed;
  const int64_t t = segment_ids.size(1);
  auto opts = at::TensorOptions().dtype(at::kLong).device(segment_ids.device());
  at::Tensor qi = at::arange(t, opts).view({t, 1}), kj = at::arange(t, opts).view({1, t});
  at::Tensor diag = at::eye(t, at::TensorOptions().dtype(at::kBool).device(segment_ids.device()));
  return allowed.logical_and((kj > qi - *sliding_window).logical_or(diag).view({1, 1, t, t})).contiguous();
}

}  // namespace qtrain
