// The parameters of a GPTQ (or round-to-nearest) quantization, as quantize_config.json names them
// (formats.md §5.7). Plain values, no tensors: config.json parsing (hf_config.h) carries them too.
#pragma once

#include <cstdint>

namespace qtrain {

struct GptqSettings {
  int bits = 4;               // 4 or 8
  int64_t group_size = 128;   // -1: one group per row; larger than a layer's input: one group there too
  bool sym = true;            // symmetric grid, zero fixed at 2^(bits-1)
  bool desc_act = false;      // act-order: columns processed by decreasing diag(H), g_idx permuted
  bool static_groups = false; // group grids computed up front from the unmodified weight
  double damp_percent = 0.01; // H += damp_percent * mean(diag H) * I (AutoGPTQ's default)
  bool true_sequential = true;
};

// Groups of a layer with `in` input columns: ceil(in / group_size), 1 when group_size is -1.
// (gptqmodel's TorchQuantLinear sizes scales/qzeros the same way; vLLM requires in % group_size == 0.)
inline int64_t gptq_num_groups(int64_t in, int64_t group_size) {
  return group_size <= 0 ? 1 : (in + group_size - 1) / group_size;
}
// The columns per group in that layer: group_size, or `in` when group_size is -1.
inline int64_t gptq_group_width(int64_t in, int64_t group_size) { return group_size <= 0 ? in : group_size; }

}  // namespace qtrain
