#include "export/gguf_readback.h"

#include <map>
#include <string>
#include <vector>

#include "data/error.h"
#include "export/gguf_export.h"
#include "export/gguf_file.h"
#include "trainer/model/weight_source.h"

namespace qtrain {
namespace {

// Serves LlamaModel::from_weights from the file: HF name → GGUF name, dequantized and un-permuted on demand.
class GgufWeights final : public WeightSource {
 public:
  GgufWeights(const gguf::File& f, const std::filesystem::path& path, const ModelConfig& c, const LoadOptions& o)
      : f_(f), path_(path), c_(c), o_(o) {}

  at::Tensor get(const std::string& name, const std::vector<int64_t>& shape) const override {
    return load(gguf_name(name), shape).to(o_.device, o_.dtype);
  }

  Linear linear(const std::string& prefix, int64_t out, int64_t in, bool bias) const override {
    Linear l;
    const std::string g = gguf_name(prefix + ".weight");
    at::Tensor w = load(g, {out, in});
    if (prefix.find("q_proj") != std::string::npos) w = gguf::unpermute_qk(w, c_.num_attention_heads);
    if (prefix.find("k_proj") != std::string::npos) w = gguf::unpermute_qk(w, c_.num_key_value_heads);
    l.weight = w.to(o_.device, o_.dtype);
    if (bias) {
      const std::string gb = gguf_name(prefix + ".bias");
      at::Tensor b = load(gb, {out});
      if (prefix.find("q_proj") != std::string::npos) b = gguf::unpermute_qk(b, c_.num_attention_heads);
      if (prefix.find("k_proj") != std::string::npos) b = gguf::unpermute_qk(b, c_.num_key_value_heads);
      l.bias = b.to(o_.device, o_.dtype);
    }
    return l;
  }

 private:
  // "model.layers.3.self_attn.q_proj.weight" → "blk.3.attn_q.weight", as write_gguf names them.
  std::string gguf_name(const std::string& hf) const {
    static const std::map<std::string, std::string> kTop = {{"model.embed_tokens.weight", "token_embd.weight"},
                                                            {"model.norm.weight", "output_norm.weight"},
                                                            {"lm_head.weight", "output.weight"}};
    static const std::map<std::string, std::string> kLayer = {
        {"input_layernorm", "attn_norm"},       {"post_attention_layernorm", "ffn_norm"},
        {"self_attn.q_proj", "attn_q"},         {"self_attn.k_proj", "attn_k"},
        {"self_attn.v_proj", "attn_v"},         {"self_attn.o_proj", "attn_output"},
        {"mlp.gate_proj", "ffn_gate"},          {"mlp.up_proj", "ffn_up"},
        {"mlp.down_proj", "ffn_down"}};
    if (auto it = kTop.find(hf); it != kTop.end()) return it->second;
    const std::string p = "model.layers.";
    if (hf.rfind(p, 0) == 0) {
      const std::size_t dot = hf.find('.', p.size());
      const std::string layer = hf.substr(p.size(), dot - p.size());
      const std::size_t last = hf.rfind('.');
      const std::string mid = hf.substr(dot + 1, last - dot - 1), suffix = hf.substr(last);
      if (auto it = kLayer.find(mid); it != kLayer.end()) return "blk." + layer + "." + it->second + suffix;
    }
    throw InputError(path_.string() + ": no GGUF tensor for " + hf + " (not a llama-architecture tensor)");
  }

  // The tensor as float32 [shape] (PyTorch order: the reverse of ggml's ne).
  at::Tensor load(const std::string& name, const std::vector<int64_t>& shape) const {
    const gguf::TensorInfo* t = nullptr;
    for (const gguf::TensorInfo& x : f_.tensors) if (x.name == name) t = &x;
    if (!t) throw InputError(path_.string() + ": missing tensor " + name);
    const std::vector<int64_t> want(shape.rbegin(), shape.rend());
    if (t->ne != want) throw InputError(path_.string() + ": tensor " + name + " has a shape the config does not imply");
    at::Tensor out = at::empty(shape, at::kFloat);
    const int64_t cols = t->ne[0];
    gguf::dequantize_rows(t->type, f_.data(*t), out.numel() / cols, cols, out.data_ptr<float>());
    return out;
  }

  const gguf::File& f_;
  const std::filesystem::path& path_;
  const ModelConfig& c_;
  const LoadOptions& o_;
};

void expect_u32(const gguf::File& f, const std::filesystem::path& path, const std::string& key, int64_t want) {
  const gguf::Value& v = f.at(key);
  if (v.type != gguf::ValueType::kU32 || static_cast<int64_t>(v.u) != want) {
    throw InputError(path.string() + ": " + key + " is not " + std::to_string(want) + " (the model's config)");
  }
}

}  // namespace

LlamaModel load_gguf_model(const std::filesystem::path& file, const ModelConfig& config, const LoadOptions& opts) {
  const gguf::File f = gguf::read_file(file);
  if (const gguf::Value* a = f.find("general.architecture"); !a || a->s != "llama") {
    throw InputError(file.string() + ": general.architecture is not llama");
  }
  expect_u32(f, file, "llama.block_count", config.num_hidden_layers);
  expect_u32(f, file, "llama.embedding_length", config.hidden_size);
  expect_u32(f, file, "llama.feed_forward_length", config.intermediate_size);
  expect_u32(f, file, "llama.attention.head_count", config.num_attention_heads);
  expect_u32(f, file, "llama.attention.head_count_kv", config.num_key_value_heads);
  LoadOptions o = opts;
  o.quantize.reset();  // the file's own quantization is what is evaluated
  const GgufWeights w(f, file, config, o);
  return LlamaModel::from_weights(config, w, o);
}

}  // namespace qtrain
