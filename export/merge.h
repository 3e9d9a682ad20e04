// Merging LoRA adapters into the frozen base (formats.md §3.5): W' = deq(W) + s·B·A, computed in
// float32 from the weight the adapter was trained against — the dequantized NF4 base when training was
// QLoRA, not the original 16-bit checkpoint (merging into those loses exactly the quantization error
// the adapter learned to work around). The merged linears are dense; writing them in bf16/fp16 is the
// only rounding, done once by the writer.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "trainer/model/model.h"

namespace qtrain {

// What one linear's adapter changed: ‖s·B·A‖_F / ‖deq(W)‖_F, the size of the update relative to the
// weight (a merge that moved nothing, or a weight swamped by its update, shows up here).
struct MergeLayerStat {
  std::string name;        // "model.layers.0.self_attn.q_proj"
  double weight_norm = 0;  // ‖deq(W)‖_F
  double delta_norm = 0;   // ‖s·B·A‖_F
  double ratio() const { return weight_norm > 0 ? delta_norm / weight_norm : 0; }
};

// deq(W) + s·B·A of one linear, [out, in] float32 on the linear's device (deq(W) alone without an
// adapter). `stat` (optional) gets the norms.
at::Tensor merged_weight(const Linear& l, MergeLayerStat* stat = nullptr);

// Replaces the linear by its merged form: a dense weight rounded once from float32 to `dtype`, no
// 4-bit state, no adapter. The bias is kept (PEFT's LoRA never trains it: bias "none").
MergeLayerStat merge_linear(const std::string& name, Linear& l, at::ScalarType dtype);

// Called with each linear's merged weight in float32 [out, in], before it is rounded to the model dtype:
// a writer rounds it once, straight to the written dtype.
using MergedWeightSink = std::function<void(const std::string& name, const at::Tensor& w32)>;

// Merges every decoder-layer linear of `model` into dense weights of the model's dtype, one at a time
// (never more than one extra float32 weight alive), in module order. Returns one stat per linear that
// had an adapter.
std::vector<MergeLayerStat> merge_adapters(LlamaModel& model, const MergedWeightSink& sink = {});

}  // namespace qtrain
