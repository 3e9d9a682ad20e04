// AWQ (Lin et al. 2023, as AutoAWQ's AwqQuantizer computes it; formats.md §6.2-6.4), the tensor-level
// parts: the group grid (pseudo_quantize_tensor), the per-channel weight statistic, the candidate
// scales of the grid search, the search loop over a caller's loss, and the clip search. All libtorch
// ops in fp32 on the weight's device, so the CPU and CUDA share the code. The model-level driver (which
// linears share a scale, what the loss runs, where scales fold) is awq_model.h.
//
// Groups are contiguous runs of group_size input columns; when group_size does not divide a layer's
// input the last group is shorter (-1, or a group_size above the input: one group), as gptq_num_groups.
// AutoAWQ itself asserts in % group_size == 0, and so do vLLM's kernels: exports meant for them need it.
#pragma once

#include <functional>
#include <vector>

#include <ATen/ATen.h>

#include "data/io/awq_settings.h"
#include "data/io/gptq_format.h"

namespace qtrain {

// The AWQ grid of W [out, in] (formats.md §6.2), per (row, group): with zero_point, scale =
// max(max - min, 1e-5)/15 and zero = clamp(-round(min/scale), 0, 15) (zero NOT forced into the range,
// unlike GPTQ); without, scale = max(max|w|, 1e-5)/7, q ∈ [-8, 7] stored as q+8 with zero 8.
// codes = clamp(round(w/scale) + zero, 0, 15), torch.round (half to even).
// The grid is computed in fp32 (AutoAWQ's pseudo-quantization of an fp32 weight); the returned scales are
// then rounded to fp16, the values the file stores, so dequantize() is what the checkpoint computes.
// Returns codes [out, in] uint8, scales [groups, out] fp32, zeros [groups, out] int32, g_idx k / width.
GptqLinear awq_quantize(const at::Tensor& W, const AwqSettings& s);
// The grid values with fp32 scales, [out, in] fp32: AutoAWQ's pseudo_quantize_tensor(w)[0] (the search's).
at::Tensor awq_fake_quantize(const at::Tensor& W, const AwqSettings& s);

// w_mean [in] (formats.md §6.3): the weights of the linears that share one input scale, concatenated
// along the output dimension, |w| / (max |w| of its (row, group) + 1e-6), averaged over rows. fp32.
at::Tensor awq_weight_mean(const std::vector<at::Tensor>& weights, int64_t group_size);

// The candidate scales [in] for `ratio` (AutoAWQ _compute_best_scale): duo scaling
// (x_mean^ratio / (w_mean^(1-ratio) + 1e-4)).clamp(min=1e-4), else x_mean^ratio.clamp(min=1e-4);
// then divided by sqrt(max·min), and inf/nan entries set to 1. x_mean [in] = mean |x| per input
// channel; w_mean [in] from awq_weight_mean (unused without duo scaling).
at::Tensor awq_candidate_scales(const at::Tensor& x_mean, const at::Tensor& w_mean, double ratio, bool duo_scaling);

struct AwqScaleSearch {
  at::Tensor scales;           // [in] fp32, the best candidate
  int best = -1;               // its grid index: ratio = best / n_grid
  std::vector<double> losses;  // the loss of every candidate, in grid order
  double ratio(int n_grid) const { return static_cast<double>(best) / n_grid; }
};
// Evaluates `loss(scales)` for ratio = 0, 1/n_grid, ..., (n_grid-1)/n_grid and keeps the first
// strictly smallest (AutoAWQ's `loss < best_error`). `loss` is the MSE of the inspected module's
// output with each linear W replaced by Q(W·diag(s))·diag(1/s). Throws InputError when no candidate
// has a finite loss (non-finite activations or weights).
AwqScaleSearch awq_search_scales(const at::Tensor& x_mean, const at::Tensor& w_mean, const AwqSettings& s,
                                 const std::function<double(const at::Tensor& scales)>& loss);

// The clip search (formats.md §6.4, AutoAWQ _compute_best_clip) of W [out, in] on the input sample
// X [tokens, in] (already subsampled, see awq_clip_step, and divided by the input's AWQ scale): per
// (row, group), max_val = max|w|·(1 - i/n_grid) for i < max_shrink·n_grid; the one whose fake-quantized
// clamp(w, -max_val, max_val) gives the smallest mean over tokens of (Σ_group x·(q - w))² wins (first
// strictly smallest). Returns max_val [out, groups] fp32.
at::Tensor awq_search_clip(const at::Tensor& W, const at::Tensor& X, const AwqSettings& s);
// clamp(W, -max_val, max_val) per (row, group): AutoAWQ apply_clip. W [out, in], max_val [out, groups].
at::Tensor awq_apply_clip(const at::Tensor& W, const at::Tensor& max_val, int64_t group_size);
// The token stride of the clip sample: max(1, tokens / clip_tokens); tokens 0, step, 2·step, ... of
// the calibration positions in order (AutoAWQ's input_feat[:, ::step_size]).
int64_t awq_clip_step(int64_t tokens, int64_t clip_tokens);

}  // namespace qtrain
