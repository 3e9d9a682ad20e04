#include "export/generate.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "data/error.h"
#include "data/tokenizer/tokenizer_config.h"
#include "trainer/model/kv_cache.h"

namespace qtrain {
namespace fs = std::filesystem;

void validate(const GenerateConfig& c) {
  if (c.max_new_tokens < 0)
    throw UsageError("max-new-tokens must be >= 0, got " + std::to_string(c.max_new_tokens));
  const SamplingConfig& s = c.sampling;
  if (s.greedy) return;
  if (!(s.temperature > 0.0) || !std::isfinite(s.temperature))
    throw UsageError("temperature must be a positive number, got " + std::to_string(s.temperature) +
                     " (for the most likely token every time, use greedy decoding)");
  if (!(s.top_p > 0.0 && s.top_p <= 1.0)) throw UsageError("top-p must be in (0, 1], got " + std::to_string(s.top_p));
  if (s.top_k < 0) throw UsageError("top-k must be >= 0 (0 = off), got " + std::to_string(s.top_k));
}

GenerateConfig default_generate_config(const fs::path& model_dir, const ModelConfig& config) {
  GenerateConfig c;
  c.eos_ids = config.eos_token_ids;
  const fs::path path = model_dir / "generation_config.json";
  if (!fs::exists(path)) return c;
  const nlohmann::json j = read_json_file(path);
  if (!j.is_object()) throw InputError(path.string() + ": expected a JSON object");
  auto number = [&](const char* key, double& out) {
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) return;
    if (!it->is_number()) throw_bad_key(path, key, "a number", *it);
    out = it->get<double>();
  };
  if (auto it = j.find("eos_token_id"); it != j.end() && !it->is_null()) {
    c.eos_ids.clear();
    if (it->is_number_integer()) {
      c.eos_ids.push_back(it->get<int64_t>());
    } else if (it->is_array()) {
      for (const auto& e : *it) {
        if (!e.is_number_integer()) throw_bad_key(path, "eos_token_id", "a token id or a list of token ids", *it);
        c.eos_ids.push_back(e.get<int64_t>());
      }
    } else {
      throw_bad_key(path, "eos_token_id", "a token id or a list of token ids", *it);
    }
  }
  if (auto it = j.find("do_sample"); it != j.end() && !it->is_null()) {
    if (!it->is_boolean()) throw_bad_key(path, "do_sample", "true or false", *it);
    c.sampling.greedy = !it->get<bool>();
  }
  number("temperature", c.sampling.temperature);
  number("top_p", c.sampling.top_p);
  if (auto it = j.find("top_k"); it != j.end() && !it->is_null()) {
    if (!it->is_number_integer()) throw_bad_key(path, "top_k", "an integer", *it);
    c.sampling.top_k = it->get<int64_t>();
  }
  return c;
}

at::Tensor sampling_probs(const at::Tensor& logits, const SamplingConfig& s) {
  TORCH_CHECK(logits.dim() == 1, "sampling_probs: logits must be [vocab], got ", logits.sizes());
  const float neg_inf = -std::numeric_limits<float>::infinity();
  at::Tensor scores = logits.to(at::kCPU, at::kFloat).clone();  // [vocab]
  if (s.temperature != 1.0) scores = scores / s.temperature;
  const int64_t vocab = scores.size(0);
  if (s.top_k > 0 && s.top_k < vocab) {
    const at::Tensor kth = std::get<0>(at::topk(scores, s.top_k)).narrow(0, s.top_k - 1, 1);  // [1]
    scores = scores.masked_fill(scores < kth, neg_inf);
  }
  if (s.top_p < 1.0) {
    const auto [sorted, order] = at::sort(scores, /*dim=*/-1, /*descending=*/false);
    at::Tensor remove = sorted.softmax(-1).cumsum(-1) <= (1.0 - s.top_p);  // ascending: the unlikely tail
    remove[vocab - 1] = false;  // the most likely token always stays
    scores = scores.masked_fill(remove.scatter(0, order, remove), neg_inf);
  }
  return scores.softmax(-1);
}

int64_t next_token(const at::Tensor& logits, const SamplingConfig& s, std::mt19937_64& rng) {
  if (s.greedy) return logits.argmax(-1).item<int64_t>();
  const at::Tensor p = sampling_probs(logits, s).to(at::kDouble).contiguous();
  const double* q = p.data_ptr<double>();
  const int64_t n = p.size(0);
  // u in [0, 1) scaled by the total (≈ 1 after rounding): the first token whose cumulative mass exceeds it.
  double total = 0.0;
  for (int64_t i = 0; i < n; ++i) total += q[i];
  const double u = std::uniform_real_distribution<double>(0.0, 1.0)(rng) * total;
  double acc = 0.0;
  int64_t last = -1;
  for (int64_t i = 0; i < n; ++i) {
    if (q[i] <= 0.0) continue;
    acc += q[i];
    last = i;
    if (u < acc) return i;
  }
  return last;  // u rounded onto the total: the last token with mass
}

GenerateResult generate(const LlamaModel& model, const std::vector<int64_t>& prompt, const GenerateConfig& c,
                        const std::function<void(int64_t)>& on_token, const RunContext* ctx) {
  validate(c);
  if (prompt.empty()) throw UsageError("generate: the prompt is empty (it needs at least one token, e.g. BOS)");
  at::NoGradGuard no_grad;
  GenerateResult out;
  std::mt19937_64 rng(c.sampling.seed);
  const auto nprompt = static_cast<int64_t>(prompt.size());
  if (c.max_new_tokens == 0) return out;
  // Room for the prompt and a first stretch of tokens; the cache doubles when a long answer needs more
  // (reserving max_new_tokens up front would cost its full size even when EOS comes after ten tokens).
  KvCache cache(model.config(), 1, model.dtype(), model.device(), nprompt + std::min<int64_t>(c.max_new_tokens, 256));
  // [vocab]: the logits of the last position; the whole prompt in one block (the prefill).
  at::Tensor logits = model.forward_cached(at::tensor(prompt, at::kLong).view({1, nprompt}), cache, ctx)[0][-1];
  for (int64_t i = 0; i < c.max_new_tokens; ++i) {
    // Non-finite logits (float16 overflow, a broken checkpoint) have no next token: say so at this step.
    if (!at::isfinite(logits).all().item<bool>())
      throw InputError("generate: the model's logits are not finite at new token " + std::to_string(i) + " (in " +
                       c10::toString(model.dtype()) + "): try --dtype float32 or bfloat16");
    const int64_t tok = next_token(logits, c.sampling, rng);
    out.tokens.push_back(tok);
    if (on_token) on_token(tok);
    if (std::find(c.eos_ids.begin(), c.eos_ids.end(), tok) != c.eos_ids.end()) {
      out.stopped_at_eos = true;
      break;
    }
    if (i + 1 == c.max_new_tokens) break;  // no forward for a token that would not be used
    logits = model.forward_cached(at::full({1, 1}, tok, at::kLong), cache, ctx)[0][-1];
  }
  return out;
}

}  // namespace qtrain
