#include "trainer/memory_plan.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <sstream>

#include "data/error.h"
#include "ops/adamw_fused.h"
#include "trainer/model/linear_modules.h"

namespace qtrain {
namespace {

constexpr double kMiB = 1024.0 * 1024.0;
constexpr int64_t kLossChunk = 4096;        // causal_lm_loss_backward's chunk_tokens
constexpr double kCudaContext = 512 * kMiB;  // CUDA context + cuBLAS workspace, outside torch's statistics
constexpr double kAllocatorSlack = 0.08;     // caching allocator rounding / fragmentation, of `allocated`

struct Linear {
  std::string name;
  int64_t out, in;
};

std::vector<Linear> layer_linears(const ModelConfig& m) {
  const int64_t h = m.hidden_size, i = m.intermediate_size;
  return {{"q_proj", m.q_dim(), h},  {"k_proj", m.kv_dim(), h}, {"v_proj", m.kv_dim(), h}, {"o_proj", h, m.q_dim()},
          {"gate_proj", i, h},       {"up_proj", i, h},         {"down_proj", h, i}};
}

bool targeted(const PlanSettings& s, const std::string& name) {
  return std::find(s.targets.begin(), s.targets.end(), name) != s.targets.end();
}

// formats.md §1: 4-bit codes, absmax per block (uint8 + nested fp32 per 256 with double quant, else fp32).
double nf4_bytes(double n, int64_t blocksize, bool dq) {
  const double blocks = std::ceil(n / static_cast<double>(blocksize));
  return std::ceil(n / 2) + (dq ? blocks + 4 * std::ceil(blocks / 256) + 4 : 4 * blocks);
}

// Optimizer state bytes of one parameter of n elements (ops/adamw_fused.h formats).
double state_bytes(double n, const OptimizerSection& o) {
  if (o.bits == 8 && n >= static_cast<double>(o.min_8bit_size)) return 2 * n + 8 * std::ceil(n / 256);
  return 8 * n;
}

}  // namespace

PlanSettings plan_settings(const Recipe& r, const ModelConfig& model, bool cuda) {
  PlanSettings s;
  s.model = model;
  s.targets = resolve_target_modules(r.model.target_modules);
  s.lora_r = r.lora.r;
  s.lora_dropout = r.lora.dropout;
  s.lora_bytes = resolved_lora_dtype(r, cuda) == DtypeChoice::kBFloat16 ? 2 : 4;
  s.quantized = r.quantization.enabled;
  s.blocksize = r.quantization.blocksize;
  s.double_quant = r.quantization.double_quant;
  s.compute_bytes = resolved_compute_dtype(r.training, cuda) == DtypeChoice::kBFloat16 ? 2 : 4;
  s.cuda = cuda;
  s.micro_batch = r.training.micro_batch_size;
  s.seq_len = r.data.max_seq_len;
  s.recompute = r.training.recompute;
  s.offload_checkpoints = r.training.offload_checkpoints;
  s.optimizer = r.optimizer;
  return s;
}

MemoryPlan plan_memory(const PlanSettings& s, double device_bytes) {
  const ModelConfig& m = s.model;
  const double d = static_cast<double>(s.compute_bytes);
  const double L = static_cast<double>(m.num_hidden_layers);
  const double H = static_cast<double>(m.hidden_size);
  const double I = static_cast<double>(m.intermediate_size);
  const double V = static_cast<double>(m.vocab_size);
  const double X = static_cast<double>(s.micro_batch) * static_cast<double>(s.seq_len);  // tokens per micro-batch
  const double r = static_cast<double>(s.lora_r);

  double base = 0, lora = 0, opt = 0, largest_weight = 0;
  double dropout_copies = 0, lora_mid = 0;  // per layer
  for (const Linear& l : layer_linears(m)) {
    const double n = static_cast<double>(l.out) * static_cast<double>(l.in);
    base += L * (s.quantized ? nf4_bytes(n, s.blocksize, s.double_quant) : n * d);
    largest_weight = std::max(largest_weight, n);
    if (!targeted(s, l.name)) continue;
    const double a = r * static_cast<double>(l.in), b = static_cast<double>(l.out) * r;
    lora += L * (a + b) * static_cast<double>(s.lora_bytes);
    opt += L * (state_bytes(a, s.optimizer) + state_bytes(b, s.optimizer));
    // PEFT's dropout on the LoRA input: the dropped copy and its mask (none at p = 0: Identity).
    if (s.lora_dropout > 0) dropout_copies += X * static_cast<double>(l.in) * (d + 1);
    lora_mid += X * r * d;  // x·A, saved for B's gradient
  }
  const double embed = V * H * d * (m.tie_word_embeddings ? 1 : 2) + (2 * L + 1) * H * d;

  // One decoder layer recomputed with grad (model.cpp layer_forward), what autograd keeps plus what flows:
  //   two RMSNorms: the fp32 copy and the normalized output; q, k, v and the RoPE'd q, k; the attention output
  //   and its [B, T, heads·hd] copy; the residual; gate, up, silu(gate) and their product; the layer output;
  //   the gradients in flight, about as large as the MLP's three widest.
  const double q = static_cast<double>(m.q_dim()), kv = static_cast<double>(m.kv_dim());
  const double layer_acts = X * (2 * H * (4 + d) + (q + 2 * kv) * d + (q + kv) * d + 2 * q * d + 2 * H * d + 4 * I * d) +
                            dropout_copies + lora_mid + 3 * X * I * d;
  // Flash / memory-efficient SDPA keeps a logsumexp per query and head (fp32); the math path would hold the
  // [B, heads, T, T] scores instead (not planned: qtrain's causal batches without a mask take the flash path).
  const double attention = static_cast<double>(s.micro_batch) * m.num_attention_heads * static_cast<double>(s.seq_len) * 4 * 2;
  const double dequant = s.quantized ? largest_weight * d : 0;  // one base weight dequantized for its matmul
  const double chunk = std::min<double>(kLossChunk, X);
  // The fused chunk (trainer/loss.cpp): one fp32 [chunk, V] buffer turned into its own gradient in place, plus in
  // bf16/fp16 the matmul's output and its gradient input in the compute dtype; d(hidden) for all rows.
  const double loss = chunk * V * (4 + (d < 4 ? 2 * d : 0)) + chunk * H * d + X * H * d;
  const double hidden = X * H * d;  // one [B, T, H] hidden state
  const double checkpoints = s.recompute ? (s.offload_checkpoints ? 2 * hidden : (L + 1) * hidden)
                                         : L * (layer_acts + attention) + hidden;
  const double step_work = s.recompute ? std::max(loss, layer_acts + attention + dequant + 2 * hidden) : loss;

  MemoryPlan p;
  p.optimizer_total = opt;
  const double rest = base + embed + lora * 2 + checkpoints + step_work;
  double opt_device = opt;
  if (s.optimizer.paged) {
    const double page = static_cast<double>(s.optimizer.page_kb) * 1024;
    double budget = s.optimizer.device_budget_mb * kMiB;
    if (budget <= 0 && device_bytes > 0) {  // what the rest leaves free
      const double free = device_bytes - rest * (1 + (s.cuda ? kAllocatorSlack : 0)) - (s.cuda ? kCudaContext : 0);
      budget = std::floor(std::max(free, page) / page) * page;
    }
    if (budget > 0) opt_device = std::min(opt, std::max(page, std::floor(budget / page) * page));
    p.host = opt;  // every page has its home in pinned host memory
  }
  if (s.offload_checkpoints && s.recompute) p.host += (L + 1) * hidden;
  const std::string dt = s.compute_bytes == 2 ? "bf16" : "fp32";
  auto add = [&](const std::string& name, double bytes, const std::string& note) { p.parts.push_back({name, bytes, note}); };
  add("base weights", base, s.quantized ? std::string("NF4") + (s.double_quant ? " + double-quant statistics" : " + fp32 absmax")
                                        : "dense " + dt);
  add("embeddings, LM head, norms", embed, std::string(m.tie_word_embeddings ? "tied, " : "") + dt);
  add("LoRA parameters", lora, "r " + std::to_string(s.lora_r) + " on " + std::to_string(s.targets.size()) + " modules");
  add("LoRA gradients", lora, "");
  add("optimizer state", opt_device,
      (s.optimizer.bits == 8 ? std::string("8-bit") : std::string("32-bit")) +
          (s.optimizer.paged ? ", paged: " + human_bytes(opt_device) + " of " + human_bytes(opt) + " on the device" : ""));
  add("recompute checkpoints", checkpoints,
      s.recompute ? (s.offload_checkpoints ? "offloaded to host; two in flight" : std::to_string(m.num_hidden_layers + 1) + " × [B, T, H]")
                  : "no recompute: every layer's activations");
  add("one layer's activations", s.recompute && step_work != loss ? layer_acts + 2 * hidden : 0, "recomputed in backward");
  add("attention workspace", s.recompute && step_work != loss ? attention : 0, "flash SDPA logsumexp");
  add("dequantized weight", s.recompute && step_work != loss ? dequant : 0, "the largest base linear, once");
  add("logits and loss", step_work == loss ? loss : 0, "chunks of " + std::to_string(static_cast<int64_t>(chunk)) + " tokens, fp32");
  p.allocated = 0;
  for (const auto& part : p.parts) p.allocated += part.bytes;
  if (s.cuda) {
    add("allocator slack", kAllocatorSlack * p.allocated, "caching allocator rounding and fragmentation");
    add("CUDA context", kCudaContext, "outside torch's statistics");
  }
  for (const auto& part : p.parts) p.peak += part.bytes;
  return p;
}

namespace {

// The largest n in [1, cap] with fits(n), for fits monotone (true up to some n, false after); 0 when
// fits(1) is false. Doubling then bisection: O(log n) plans.
int64_t largest_fitting(int64_t cap, const std::function<bool(int64_t)>& fits) {
  if (!fits(1)) return 0;
  int64_t lo = 1, hi = 2;
  while (hi <= cap && fits(hi)) lo = hi, hi *= 2;
  hi = std::min(hi, cap + 1);
  while (hi - lo > 1) {  // lo fits, hi does not (or is past the cap)
    const int64_t mid = lo + (hi - lo) / 2;
    (fits(mid) ? lo : hi) = mid;
  }
  return lo;
}

}  // namespace

int64_t longest_fitting_context(PlanSettings s, double device_bytes) {
  const int64_t t = largest_fitting(int64_t{1} << 27, [&](int64_t n) {
    s.seq_len = n;
    return plan_memory(s, device_bytes).peak <= device_bytes;
  });
  return t >= 256 ? t / 256 * 256 : t;
}

int64_t largest_fitting_batch(PlanSettings s, double device_bytes) {
  return largest_fitting(int64_t{1} << 20, [&](int64_t n) {
    s.micro_batch = n;
    return plan_memory(s, device_bytes).peak <= device_bytes;
  });
}

std::string human_bytes(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (std::fabs(bytes) >= 1024 && u < 4) bytes /= 1024, ++u;
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.2f %s", bytes, units[u]);
  return buf;
}

double parse_bytes(const std::string& text, const std::string& what) {
  std::size_t used = 0;
  double v = 0;
  try {
    v = std::stod(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  std::string unit = text.substr(used);
  unit.erase(std::remove(unit.begin(), unit.end(), ' '), unit.end());
  for (auto& c : unit) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  const std::vector<std::pair<std::string, double>> units = {
      {"", 1},          {"b", 1},           {"kib", 1024.0},   {"mib", kMiB},      {"gib", kMiB * 1024},
      {"tib", kMiB * kMiB}, {"kb", 1e3},    {"mb", 1e6},       {"gb", 1e9},        {"tb", 1e12},
      {"k", 1024.0},    {"m", kMiB},        {"g", kMiB * 1024}, {"t", kMiB * kMiB}};
  for (const auto& [name, scale] : units)
    if (used > 0 && unit == name && v > 0 && std::isfinite(v)) return v * scale;
  throw UsageError(what + ": '" + text + "' is not a memory size (e.g. 24GiB, 80GB, 24000MiB)");
}

std::string format_plan(const MemoryPlan& p, const PlanSettings& s) {
  std::ostringstream o;
  const ModelConfig& m = s.model;
  o << "memory plan: " << m.num_hidden_layers << " layers, hidden " << m.hidden_size << ", ffn " << m.intermediate_size
    << ", vocab " << m.vocab_size << "; micro-batch " << s.micro_batch << " × " << s.seq_len << " tokens, "
    << (s.compute_bytes == 2 ? "bf16" : "fp32") << " on " << (s.cuda ? "CUDA" : "the CPU") << "\n";
  for (const auto& part : p.parts) {
    char line[160];
    std::snprintf(line, sizeof line, "  %-28s %12s", part.name.c_str(), human_bytes(part.bytes).c_str());
    o << line << (part.note.empty() ? "" : "   " + part.note) << "\n";
  }
  char line[160];
  std::snprintf(line, sizeof line, "  %-28s %12s", "peak (device)", human_bytes(p.peak).c_str());
  o << line << "\n";
  if (p.host > 0) {
    std::snprintf(line, sizeof line, "  %-28s %12s", "pinned host memory", human_bytes(p.host).c_str());
    o << line << "   paged optimizer state / offloaded checkpoints\n";
  }
  return o.str();
}

}  // namespace qtrain
