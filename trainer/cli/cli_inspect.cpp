// qtrain inspect MODEL_DIR: what a checkpoint is and what it costs in memory, read from config.json
// and the safetensors headers only (no tensor data is touched).
#include <cstdio>
#include <iostream>
#include <map>
#include <set>

#include "data/io/hf_config.h"
#include "data/io/safetensors.h"
#include "trainer/cli/cli.h"
#include "data/io/bnb_format.h"
#include "trainer/cli/cli_options.h"

namespace qtrain::cli {
namespace {

enum class Kind { kEmbedding, kAttention, kMlp, kNorm, kLmHead, kOther };

const char* kind_name(Kind k) {
  switch (k) {
    case Kind::kEmbedding: return "embedding";
    case Kind::kAttention: return "attention linears";
    case Kind::kMlp: return "mlp linears";
    case Kind::kNorm: return "norms";
    case Kind::kLmHead: return "lm_head";
    case Kind::kOther: return "other";
  }
  return "?";
}

Kind classify(const std::string& name) {
  auto has = [&](const char* s) { return name.find(s) != std::string::npos; };
  if (has("embed_tokens")) return Kind::kEmbedding;
  if (has("lm_head")) return Kind::kLmHead;
  if (has("norm")) return Kind::kNorm;
  if (has(".self_attn.") && has("_proj.")) return Kind::kAttention;
  if (has(".mlp.") && has("_proj.")) return Kind::kMlp;
  return Kind::kOther;
}

bool is_quantizable(Kind k) { return k == Kind::kAttention || k == Kind::kMlp; }

std::string human(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (bytes >= 1024 && u < 4) bytes /= 1024, ++u;
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.2f %s", bytes, units[u]);
  return buf;
}

// Bytes of one weight matrix of n elements in NF4 with double quantization (formats.md §1):
// 4-bit codes, one uint8 absmax per 64-block, one fp32 nested absmax per 256 absmax, one fp32 offset.
double nf4_dq_bytes(uint64_t n) {
  const uint64_t blocks = (n + 63) / 64;
  return (n + 1) / 2 + blocks + 4.0 * ((blocks + 255) / 256) + 4;
}

}  // namespace

int run_inspect(const std::vector<std::string>& args) {
  VerbSpec spec;
  spec.usage = "qtrain inspect MODEL_DIR";
  std::string model;
  spec.hidden.add_options()("model", po::value(&model)->required(), "model directory");
  spec.positional.add("model", 1);
  if (!parse_verb(args, spec)) return 0;

  const std::filesystem::path dir(resolve_model_arg(model, "model"));
  const ModelConfig c = parse_model_config(dir / "config.json");
  const auto ckpt = safetensors::Checkpoint::open(dir);

  std::map<Kind, uint64_t> params;
  std::map<std::string, uint64_t> dtypes;
  uint64_t total = 0, stored_bytes = 0;
  double nf4_bytes = 0;
  // In a bitsandbytes 4-bit checkpoint a weight is several tensors (packed codes, scales, a JSON blob):
  // count its parameters once, from the quantization state, and its real stored bytes.
  std::set<std::string> quantized;
  for (const auto& name : ckpt.names())
    if (bnb::is_quantized(ckpt, name)) quantized.insert(name);
  auto companion_of = [&](const std::string& name) {
    for (const auto& w : quantized)
      if (name.size() > w.size() && name.compare(0, w.size() + 1, w + ".") == 0) return true;
    return false;
  };
  // A GPTQ linear P is P.qweight [in·bits/32, out] with P.qzeros, P.scales, P.g_idx: counted once, as
  // in·out parameters of the qweight.
  auto ends_with = [](const std::string& s, const std::string& suffix) {
    return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
  };
  auto gptq_companion = [&](const std::string& name) {
    if (!c.gptq) return false;
    for (const char* sfx : {".qzeros", ".scales", ".g_idx"})
      if (ends_with(name, sfx) && ckpt.contains(name.substr(0, name.size() - std::string(sfx).size()) + ".qweight"))
        return true;
    return false;
  };
  for (const auto& name : ckpt.names()) {
    const auto& info = ckpt.info(name);
    stored_bytes += info.end - info.begin;
    if (companion_of(name) || gptq_companion(name)) continue;
    const Kind k = classify(name);
    const bool gptq = c.gptq && ends_with(name, ".qweight") && info.shape.size() == 2;
    const uint64_t n = quantized.count(name) ? bnb::load(ckpt, name, at::kCPU).numel()
                       : gptq               ? info.numel() * (32 / c.gptq->bits)
                                            : info.numel();
    params[k] += n;
    total += n;
    dtypes[quantized.count(name) ? std::string("4-bit")
           : gptq                ? "gptq-" + std::to_string(c.gptq->bits) + "bit"
                                 : std::string(safetensors::dtype_name(info.dtype))] += n;
    const bool matrix = gptq || (name.size() > 7 && name.compare(name.size() - 7, 7, ".weight") == 0 &&
                                 (info.shape.size() == 2 || quantized.count(name)));
    nf4_bytes += (is_quantizable(k) && matrix) ? nf4_dq_bytes(n) : 2.0 * n;
  }

  std::cout << "model        " << dir.string() << "\n"
            << "architecture " << family_name(c.family) << ": " << c.num_hidden_layers << " layers, hidden "
            << c.hidden_size << ", ffn " << c.intermediate_size << ", heads " << c.num_attention_heads << " (kv "
            << c.num_key_value_heads << ", head_dim " << c.head_dim << "), vocab " << c.vocab_size << "\n"
            << "rope         " << rope_type_name(c.rope.type) << ", theta " << c.rope.theta;
  if (c.rope.type != RopeType::kDefault) std::cout << ", factor " << c.rope.factor;
  if (c.bnb_4bit)
    std::cout << "\nquantized    bitsandbytes " << c.bnb_4bit->quant_type << (c.bnb_4bit->double_quant ? " + double quant" : "")
              << " (" << quantized.size() << " 4-bit weights)";
  if (c.gptq)
    std::cout << "\nquantized    GPTQ v1 " << c.gptq->bits << "-bit, group_size " << c.gptq->group_size
              << (c.gptq->sym ? ", sym" : ", asym") << (c.gptq->desc_act ? ", desc_act" : "")
              << (c.gptq->static_groups ? ", static_groups" : "");
  std::cout << "\nembeddings   " << (c.tie_word_embeddings ? "tied" : "untied") << "\n";
  if (c.sliding_window) std::cout << "window       " << *c.sliding_window << "\n";
  std::cout << "parameters   " << total << "\n";
  for (const auto& [k, n] : params) std::printf("  %-18s %14llu\n", kind_name(k), static_cast<unsigned long long>(n));
  std::cout << "dtypes      ";
  for (const auto& [d, n] : dtypes) std::cout << " " << d << " (" << n << ")";
  std::cout << "\nshards       " << ckpt.files().size() << "\n";
  for (const auto& f : ckpt.files())
    std::cout << "  " << f.filename().string() << "  " << human(static_cast<double>(std::filesystem::file_size(f))) << "\n";
  std::cout << "memory       stored " << human(static_cast<double>(stored_bytes)) << ", bf16 " << human(2.0 * total)
            << ", NF4 + double quant (linears in NF4, the rest bf16) " << human(nf4_bytes) << "\n";
  return 0;
}

}  // namespace qtrain::cli
