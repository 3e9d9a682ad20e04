// The memory planner (issue 13): the peak device memory a training run will need, by component, computed
// from the recipe and the model's config.json before anything is loaded. `qtrain plan` prints it with the
// largest micro-batch × sequence length that fits a given memory; `qtrain train` refuses a run that cannot
// fit (--no-plan-check overrides). docs/PERFORMANCE.md has the model's derivation and its checks against
// measured peaks.
//
// The model follows what the step does (trainer/step.cpp, loss.cpp, model/recompute.cpp):
//   resident   NF4 base (+ double-quant statistics), embeddings / LM head / norms in the compute dtype,
//              LoRA parameters and their gradients, the optimizer state held on the device
//   per step   recompute checkpoints (each layer's input [B, T, H], kept unless offloaded), then the larger of
//              (a) the loss phase: chunked logits [≤4096, vocab] in fp32 + d(hidden) [B, T, H]
//              (b) the backward of one layer recomputed: its saved activations and the gradients flowing,
//                  the attention workspace and one dequantized base weight
//   slack      the CUDA caching allocator's rounding and fragmentation (a fraction of the above) and the
//              CUDA context, which torch's allocator statistics do not see
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "data/io/hf_config.h"
#include "trainer/config.h"

namespace qtrain {

struct PlanSettings {
  ModelConfig model;
  std::vector<std::string> targets;  // resolved module names (q_proj ... down_proj)
  int64_t lora_r = 16;
  double lora_dropout = 0.05;
  int64_t lora_bytes = 4;     // adapter master weights: fp32 4, bf16 2
  bool quantized = true;
  int64_t blocksize = 64;
  bool double_quant = true;
  int64_t compute_bytes = 2;  // activations and dense weights: bf16 2, fp32 4
  bool cuda = true;           // allocator slack and the context apply on CUDA only
  int64_t micro_batch = 1;
  int64_t seq_len = 2048;
  bool recompute = true;
  bool offload_checkpoints = false;
  OptimizerSection optimizer;
};

struct MemoryPart {
  std::string name;
  double bytes = 0;
  std::string note;
};

struct MemoryPlan {
  std::vector<MemoryPart> parts;  // device memory, in print order; their sum is `peak`
  double peak = 0;                // everything: what must fit in the device's memory
  double allocated = 0;           // without the CUDA context and allocator slack: torch's max_memory_allocated
  double host = 0;                // pinned host memory: paged optimizer state, offloaded checkpoints
  double optimizer_total = 0;     // optimizer state, resident + paged
};

// The settings of `r` on CUDA (bf16 compute unless the recipe says otherwise) or the CPU.
PlanSettings plan_settings(const Recipe& r, const ModelConfig& model, bool cuda);

// `device_bytes` > 0: a paged optimizer keeps on the device what the rest leaves free (at least one page).
MemoryPlan plan_memory(const PlanSettings& s, double device_bytes = 0);

// The longest sequence (multiple of 256, or of 1 below 256) at s.micro_batch that fits `device_bytes`, and the
// largest micro-batch at s.seq_len; 0 when none does.
int64_t longest_fitting_context(PlanSettings s, double device_bytes);
int64_t largest_fitting_batch(PlanSettings s, double device_bytes);

std::string human_bytes(double bytes);
// "24GiB", "80 GB", "24000MiB", "1.5TiB", plain bytes → bytes; throws UsageError naming `what`.
double parse_bytes(const std::string& text, const std::string& what);

// The table `qtrain plan` prints (and `qtrain train` when it refuses).
std::string format_plan(const MemoryPlan& p, const PlanSettings& s);

}  // namespace qtrain
