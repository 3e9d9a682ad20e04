// The parameters of an AWQ quantization (formats.md §6; AutoAWQ's names in comments). Plain values, no
// tensors: config.json parsing (hf_config.h) carries the storage part (bits, group_size, zero_point).
#pragma once

#include <cstdint>

namespace qtrain {

struct AwqSettings {
  // Storage (config.json quantization_config).
  int bits = 4;               // w_bit: 4 only (the GEMM layout packs 8 values a word)
  int64_t group_size = 128;   // q_group_size; -1 or larger than a layer's input: one group there
                              // (gptq_num_groups semantics; vLLM's kernels need in % group_size == 0)
  // zero_point: asymmetric min/max grid with a zero per group (AutoAWQ's default). false: the symmetric
  // grid q ∈ [-8, 7], scale = max|w|/7, stored as q+8 with zeros 8, so the file is GEMM with qzeros
  // either way (config.json says zero_point true: every reader dequantizes (q - z)·s).
  bool zero_point = true;
  // Search (AutoAWQ AwqQuantizer defaults).
  bool duo_scaling = true;    // s = x_mean^r / (w_mean^(1-r) + 1e-4); false: s = x_mean^r (llm-awq)
  int n_grid = 20;            // ratios r = 0, 1/n_grid, ..., (n_grid-1)/n_grid
  bool apply_clip = true;     // the per-group clip search after scaling (not on q/k)
  double max_shrink = 0.5;    // clip candidates max·(1 - i/n_grid), i < max_shrink·n_grid
  int64_t clip_tokens = 512;  // n_sample_token: the clip search uses every (n_tokens / 512)-th token
};

}  // namespace qtrain
