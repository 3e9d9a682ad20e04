// Text generation with a LlamaModel and its KV cache (LlamaModel::forward_cached): greedy or sampled
// next-token choice, stopping at max_new_tokens or after any end-of-sequence id.
//
// Greedy is argmax over the last position's logits (the first maximum on ties, as torch.argmax), the
// same choice as transformers' generate(do_sample=False); tests/oracle/test_generate.py checks it token
// for token. Sampling follows transformers' logits warpers, in their order (generation/utils.py
// _get_logits_processor), on float32 logits:
//   1. temperature: logits / T                       (skipped at T = 1)
//   2. top-k:       logits below the k-th largest → -inf (ties with the k-th kept; k ≥ vocab or 0: off)
//   3. top-p:       sort ascending, p = softmax, c = cumsum(p); tokens with c ≤ 1 − top_p → -inf, the
//                   most likely token always kept (nucleus: the smallest set of top tokens whose mass ≥ top_p)
//   4. probabilities = softmax(logits), one token drawn from them.
// The draw is a uniform double from std::mt19937_64 seeded with `seed`, walked along the cumulative
// probabilities in token order: the same seed gives the same tokens on every device and run (it cannot
// give transformers' tokens, which come from torch's generator).
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <random>
#include <vector>

#include <ATen/ATen.h>

#include "trainer/model/model.h"

namespace qtrain {

struct SamplingConfig {
  bool greedy = true;        // argmax; the fields below are then unused
  double temperature = 1.0;  // > 0
  int64_t top_k = 50;        // 0 = off (transformers' default 50)
  double top_p = 1.0;        // in (0, 1]; 1 = off
  uint64_t seed = 0;
};

struct GenerateConfig {
  int64_t max_new_tokens = 128;
  SamplingConfig sampling;
  std::vector<int64_t> eos_ids;  // generation stops after producing any of them (it is kept in the output)
};

// Throws UsageError naming the setting when a value is out of its range (temperature ≤ 0 or not
// finite, top_p outside (0, 1], top_k < 0, max_new_tokens < 0).
void validate(const GenerateConfig& c);

// What transformers' generate uses for the model in `model_dir` by default: generation_config.json's
// eos_token_id (an id or a list), temperature, top_k, top_p and do_sample (greedy = !do_sample) where
// present, else config.json's eos ids and transformers' defaults (1.0, 50, 1.0, greedy).
// InputError naming the file and key for a value of the wrong type.
GenerateConfig default_generate_config(const std::filesystem::path& model_dir, const ModelConfig& config);

// Steps 1-4 above: logits [vocab] (any dtype, any device) → float32 probabilities [vocab] on the CPU.
at::Tensor sampling_probs(const at::Tensor& logits, const SamplingConfig& s);

// The next token: argmax when s.greedy, else a draw from sampling_probs with `rng`.
int64_t next_token(const at::Tensor& logits, const SamplingConfig& s, std::mt19937_64& rng);

struct GenerateResult {
  std::vector<int64_t> tokens;  // the new tokens only
  bool stopped_at_eos = false;
};

// Feeds `prompt` (≥ 1 token) through a fresh cache, then one token at a time. on_token, when set, sees
// each new token as it is chosen (for streaming). ctx is passed to the model (nullptr: inference).
GenerateResult generate(const LlamaModel& model, const std::vector<int64_t>& prompt, const GenerateConfig& c,
                        const std::function<void(int64_t)>& on_token = {}, const RunContext* ctx = nullptr);

}  // namespace qtrain
