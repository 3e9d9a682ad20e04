#include "data/io/hf_config.h"

#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "data/error.h"
#include "data/json_depth.h"

namespace qtrain {
namespace {

using nlohmann::json;

struct FamilyEntry {
  ModelFamily family;
  std::string_view model_type;
};
constexpr FamilyEntry kFamilies[] = {{ModelFamily::kLlama, "llama"},
                                     {ModelFamily::kMistral, "mistral"},
                                     {ModelFamily::kQwen2, "qwen2"},
                                     {ModelFamily::kQwen3, "qwen3"}};

struct RopeEntry {
  RopeType type;
  std::string_view name;
};
constexpr RopeEntry kRopes[] = {{RopeType::kDefault, "default"}, {RopeType::kLinear, "linear"}, {RopeType::kLlama3, "llama3"}};

// Reads config keys with the source named in every error.
class Reader {
 public:
  // prefix: the path of a nested object's keys in messages ("quantization_config.").
  Reader(const json& j, std::string source, std::string prefix = "") : j_(j), source_(std::move(source)), prefix_(std::move(prefix)) {}

  [[noreturn]] void fail(const std::string& key, const std::string& msg) const {
    throw InputError(source_ + ": key '" + prefix_ + key + "': " + msg);
  }
  bool has(const std::string& key) const { return j_.contains(key) && !j_[key].is_null(); }

  int64_t integer(const std::string& key) const {
    if (!has(key)) fail(key, "missing (required)");
    return integer_at(j_[key], key);
  }
  int64_t integer_or(const std::string& key, int64_t dflt) const { return has(key) ? integer_at(j_[key], key) : dflt; }
  int64_t integer_at(const json& v, const std::string& key) const {
    if (!v.is_number_integer()) fail(key, "expected an integer, found " + v.dump());
    return v.get<int64_t>();
  }
  double number_or(const std::string& key, double dflt) const { return has(key) ? number_at(j_[key], key) : dflt; }
  double number_at(const json& v, const std::string& key) const {
    if (!v.is_number()) fail(key, "expected a number, found " + v.dump());
    return v.get<double>();
  }
  bool boolean_or(const std::string& key, bool dflt) const {
    if (!has(key)) return dflt;
    if (!j_[key].is_boolean()) fail(key, "expected true or false, found " + j_[key].dump());
    return j_[key].get<bool>();
  }
  std::string string_or(const std::string& key, const std::string& dflt) const {
    if (!has(key)) return dflt;
    if (!j_[key].is_string()) fail(key, "expected a string, found " + j_[key].dump());
    return j_[key].get<std::string>();
  }
  const json& at(const std::string& key) const { return j_[key]; }

 private:
  const json& j_;
  std::string source_, prefix_;
};

RopeConfig parse_rope(const Reader& r) {
  RopeConfig rope;
  // transformers 5.x: rope_parameters {rope_theta, rope_type, ...}; 4.x: rope_theta + rope_scaling.
  const bool v5 = r.has("rope_parameters");
  const std::string key = v5 ? "rope_parameters" : "rope_scaling";
  rope.theta = r.number_or("rope_theta", 10000.0);
  if (!r.has(key)) return rope;
  const json& p = r.at(key);
  if (!p.is_object()) r.fail(key, "expected an object, found " + p.dump());
  auto num = [&](const char* k, double dflt) {
    if (!p.contains(k) || p[k].is_null()) return dflt;
    return r.number_at(p[k], key + "." + k);
  };
  if (v5) rope.theta = num("rope_theta", rope.theta);
  std::string type = "default";
  if (p.contains("rope_type") && p["rope_type"].is_string()) type = p["rope_type"].get<std::string>();
  else if (p.contains("type") && p["type"].is_string()) type = p["type"].get<std::string>();
  bool found = false;
  for (const auto& e : kRopes)
    if (e.name == type) {
      rope.type = e.type;
      found = true;
    }
  if (!found)
    r.fail(key + ".rope_type", "unsupported rope scaling type '" + type + "' (supported: default, linear, llama3)");
  rope.factor = num("factor", 1.0);
  if (rope.type == RopeType::kLlama3) {
    rope.low_freq_factor = num("low_freq_factor", 1.0);
    rope.high_freq_factor = num("high_freq_factor", 4.0);
    if (!p.contains("original_max_position_embeddings")) r.fail(key + ".original_max_position_embeddings", "missing (required for llama3 rope)");
    rope.original_max_position_embeddings = r.integer_at(p["original_max_position_embeddings"], key + ".original_max_position_embeddings");
  }
  if (rope.theta <= 0) r.fail(v5 ? key + ".rope_theta" : "rope_theta", "must be positive, found " + std::to_string(rope.theta));
  return rope;
}

std::vector<int64_t> id_list(const Reader& r, const std::string& key) {
  if (!r.has(key)) return {};
  const json& v = r.at(key);
  if (v.is_array()) {
    std::vector<int64_t> out;
    for (const auto& e : v) out.push_back(r.integer_at(e, key));
    return out;
  }
  return {r.integer_at(v, key)};
}

// quantization_config of a GPTQ checkpoint (formats.md §5.7; AutoGPTQ and GPTQModel spellings). Only the
// v1 packing ("gptq") is read: v2 stores the true zero and would dequantize one step off.
GptqSettings parse_gptq(const Reader& qr) {
  GptqSettings g;
  g.bits = static_cast<int>(qr.integer("bits"));
  if (g.bits != 4 && g.bits != 8)
    qr.fail("bits", "only 4- and 8-bit GPTQ checkpoints are supported, found " + std::to_string(g.bits));
  g.group_size = qr.integer("group_size");
  if (g.group_size != -1 && g.group_size <= 0)
    qr.fail("group_size", "expected -1 or a positive integer, found " + std::to_string(g.group_size));
  g.sym = qr.boolean_or("sym", true);
  g.desc_act = qr.boolean_or("desc_act", false);
  g.static_groups = qr.boolean_or("static_groups", false);
  g.true_sequential = qr.boolean_or("true_sequential", true);
  g.damp_percent = qr.number_or("damp_percent", g.damp_percent);
  // AutoGPTQ writes checkpoint_format, GPTQModel also `format`; both absent means AutoGPTQ's v1.
  const std::string key = qr.has("checkpoint_format") ? "checkpoint_format" : "format";
  const std::string fmt = qr.string_or(key, "gptq");
  if (fmt != "gptq")
    qr.fail(key, "only GPTQ v1 checkpoints (\"gptq\") can be loaded, found '" + fmt + "'" +
                     (fmt == "gptq_v2" ? " (GPTQModel's v2 stores the true zero; save it with format \"gptq\")" : ""));
  const std::string pack = qr.string_or("pack_dtype", "int32");
  if (pack != "int32") qr.fail("pack_dtype", "only int32 packing is supported, found '" + pack + "'");
  return g;
}

// quantization_config of an AWQ checkpoint (formats.md §6.6; AutoAWQ's w_bit / q_group_size spellings
// too, as vLLM accepts them). Only the GEMM packing with zero points is read: GEMV packs along the input
// dimension, and GEMM checkpoints always carry qzeros.
AwqSettings parse_awq(const Reader& qr) {
  AwqSettings a;
  const std::string bits_key = qr.has("bits") ? "bits" : "w_bit";
  a.bits = static_cast<int>(qr.integer(bits_key));
  if (a.bits != 4) qr.fail(bits_key, "only 4-bit AWQ checkpoints are supported, found " + std::to_string(a.bits));
  const std::string group_key = qr.has("group_size") ? "group_size" : "q_group_size";
  a.group_size = qr.integer(group_key);
  if (a.group_size != -1 && a.group_size <= 0)
    qr.fail(group_key, "expected -1 or a positive integer, found " + std::to_string(a.group_size));
  a.zero_point = qr.boolean_or("zero_point", true);
  if (!a.zero_point)
    qr.fail("zero_point", "only AWQ checkpoints with zero points (zero_point true) can be loaded; GEMM stores qzeros");
  const std::string version = qr.string_or("version", "gemm");
  if (version != "gemm" && version != "GEMM")
    qr.fail("version", "only the AWQ GEMM packing (\"gemm\") can be loaded, found '" + version + "'");
  if (qr.has("modules_to_not_convert")) {
    const json& m = qr.at("modules_to_not_convert");
    if (!m.is_array()) qr.fail("modules_to_not_convert", "expected null or a list, found " + m.dump());
    // Modules kept in full precision load as plain weights (their tensors say so); nothing to record.
  }
  return a;
}

}  // namespace

std::string_view family_name(ModelFamily f) {
  for (const auto& e : kFamilies)
    if (e.family == f) return e.model_type;
  return "?";
}

std::string_view rope_type_name(RopeType t) {
  for (const auto& e : kRopes)
    if (e.type == t) return e.name;
  return "?";
}

ModelConfig parse_model_config_text(const std::string& text, const std::string& source) {
  if (const size_t at = json_too_deep_at(text); at != std::string::npos)
    throw InputError(source + ": JSON nested deeper than " + std::to_string(kMaxJsonDepth) + " levels at byte " + std::to_string(at));
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {  // parse_error, or out_of_range for a number too large for a double
    throw InputError(source + ": not valid JSON: " + e.what());
  }
  if (!j.is_object()) throw InputError(source + ": expected a JSON object");
  Reader r(j, source);

  ModelConfig c;
  if (!r.has("model_type")) r.fail("model_type", "missing (required)");
  const std::string mt = r.string_or("model_type", "");
  bool known = false;
  for (const auto& e : kFamilies)
    if (e.model_type == mt) {
      c.family = e.family;
      known = true;
    }
  if (!known) r.fail("model_type", "unsupported model_type '" + mt + "' (supported: llama, mistral, qwen2, qwen3)");

  c.vocab_size = r.integer("vocab_size");
  c.hidden_size = r.integer("hidden_size");
  c.intermediate_size = r.integer("intermediate_size");
  c.num_hidden_layers = r.integer("num_hidden_layers");
  c.num_attention_heads = r.integer("num_attention_heads");
  c.num_key_value_heads = r.integer_or("num_key_value_heads", c.num_attention_heads);
  for (auto [k, v] : {std::pair<const char*, int64_t>{"vocab_size", c.vocab_size}, {"hidden_size", c.hidden_size},
                      {"intermediate_size", c.intermediate_size}, {"num_hidden_layers", c.num_hidden_layers},
                      {"num_attention_heads", c.num_attention_heads}, {"num_key_value_heads", c.num_key_value_heads}})
    if (v <= 0) r.fail(k, "must be positive, found " + std::to_string(v));
  if (c.num_attention_heads % c.num_key_value_heads != 0)
    r.fail("num_key_value_heads", std::to_string(c.num_key_value_heads) + " does not divide num_attention_heads " +
                                      std::to_string(c.num_attention_heads));
  if (r.has("head_dim")) {
    c.head_dim = r.integer("head_dim");
  } else {
    if (c.hidden_size % c.num_attention_heads != 0)
      r.fail("head_dim", "missing, and hidden_size is not divisible by num_attention_heads");
    c.head_dim = c.hidden_size / c.num_attention_heads;
  }
  if (c.head_dim <= 0 || c.head_dim % 2 != 0) r.fail("head_dim", "must be positive and even (RoPE rotates pairs), found " + std::to_string(c.head_dim));
  c.max_position_embeddings = r.integer_or("max_position_embeddings", c.max_position_embeddings);
  c.rms_norm_eps = r.number_or("rms_norm_eps", c.rms_norm_eps);
  c.rope = parse_rope(r);
  c.tie_word_embeddings = r.boolean_or("tie_word_embeddings", false);
  const std::string act = r.string_or("hidden_act", "silu");
  if (act != "silu") r.fail("hidden_act", "unsupported activation '" + act + "' (the Llama family uses silu)");

  switch (c.family) {
    case ModelFamily::kLlama:
      c.attention_bias = r.boolean_or("attention_bias", false);
      c.mlp_bias = r.boolean_or("mlp_bias", false);
      break;
    case ModelFamily::kMistral:
      if (r.has("sliding_window")) c.sliding_window = r.integer("sliding_window");
      break;
    case ModelFamily::kQwen2:
    case ModelFamily::kQwen3:
      if (c.family == ModelFamily::kQwen2) c.qkv_bias = true;
      else {
        c.attention_bias = r.boolean_or("attention_bias", false);
        c.qk_norm = true;
      }
      if (r.boolean_or("use_sliding_window", false))
        r.fail("use_sliding_window", "sliding-window attention for " + mt + " is not supported yet");
      break;
  }
  if (c.sliding_window && *c.sliding_window <= 0) r.fail("sliding_window", "must be positive");

  if (r.has("bos_token_id")) c.bos_token_id = r.integer("bos_token_id");
  c.eos_token_ids = id_list(r, "eos_token_id");
  if (r.has("pad_token_id")) c.pad_token_id = r.integer("pad_token_id");
  c.torch_dtype = r.string_or("torch_dtype", r.string_or("dtype", "float32"));
  if (r.has("quantization_config")) {
    const json& q = r.at("quantization_config");
    const std::string key = "quantization_config";
    if (!q.is_object()) r.fail(key, "expected an object, found " + q.dump());
    const Reader qr(q, source, key + ".");  // typed reads: a wrong type names the key, not nlohmann's type_error
    const std::string method = qr.string_or("quant_method", "?");
    if (method == "gptq") {
      c.gptq = parse_gptq(qr);
      return c;
    }
    if (method == "awq") {
      c.awq = parse_awq(qr);
      return c;
    }
    const bool four_bit = qr.boolean_or("load_in_4bit", qr.boolean_or("_load_in_4bit", false));
    if (method != "bitsandbytes" || !four_bit)
      r.fail(key + ".quant_method", "only bitsandbytes 4-bit, GPTQ and AWQ checkpoints can be loaded (found quant_method '" +
                                        method + "', load_in_4bit " + (four_bit ? "true" : "false") +
                                        "); start from the full-precision model instead");
    Bnb4bitConfig b;
    b.quant_type = qr.string_or("bnb_4bit_quant_type", "fp4");  // the BitsAndBytesConfig default
    if (b.quant_type != "nf4" && b.quant_type != "fp4")
      r.fail(key + ".bnb_4bit_quant_type", "expected nf4 or fp4, found '" + b.quant_type + "'");
    b.double_quant = qr.boolean_or("bnb_4bit_use_double_quant", false);
    b.compute_dtype = qr.string_or("bnb_4bit_compute_dtype", "float32");
    const std::string storage = qr.string_or("bnb_4bit_quant_storage", "uint8");
    if (storage != "uint8")
      r.fail(key + ".bnb_4bit_quant_storage", "only uint8 storage is supported, found '" + storage + "'");
    c.bnb_4bit = b;
  }
  return c;
}

ModelConfig parse_model_config(const std::filesystem::path& path) {
  std::ifstream in(path);
  if (!in) throw InputError(path.string() + ": cannot open config.json");
  std::stringstream ss;
  ss << in.rdbuf();
  return parse_model_config_text(ss.str(), path.string());
}

}  // namespace qtrain
