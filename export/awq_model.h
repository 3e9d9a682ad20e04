// AWQ of a whole Llama-family model, decoder layer by decoder layer (formats.md §6.3-6.4, AutoAWQ's
// AwqQuantizer.quantize): for each layer, merge its adapters; one pass over the calibration set
// collects every linear's input statistics (mean |x| per channel, the Hessian 2/n·Σxxᵀ, a token sample
// for the clip search, the attention's and the MLP's full-precision outputs); the scale search for each
// of the layer's mappings (all on the unscaled layer, as AutoAWQ):
//   input_layernorm → q, k, v      loss: MSE of the attention block's output
//   v_proj → o_proj                only when v and o have the same shape (no GQA), as AutoAWQ's llama
//   post_attention_layernorm → gate, up   loss: MSE of the MLP's output
//   up_proj → down_proj
// then the scales are folded (norm weight /= s, or the previous linear's rows /= s; the linears' input
// columns *= s), the clip search runs on every linear but q and k, and each linear is quantized on the
// AWQ grid. The calibration set then runs through the quantized layer to give the next layer's inputs
// (AutoAWQ feeds the next layer the full-precision outputs; here, as in quantize_model.h and
// llm-compressor, the quantized ones, so each layer is calibrated on what it will see). Plain libtorch
// ops on the model's device: the same code on CPU and CUDA.
#pragma once

#include <map>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "data/io/awq_settings.h"
#include "export/awq.h"
#include "export/calibration.h"
#include "export/quantize_model.h"
#include "trainer/model/model.h"

namespace qtrain {

// The four input scales of one decoder layer ([in] fp32 each; undefined = none, i.e. all ones).
struct AwqLayerScales {
  at::Tensor attn_in;  // [hidden]: input_layernorm → q, k, v
  at::Tensor v_o;      // [kv_heads·head_dim]: v_proj rows → o_proj columns (undefined under GQA)
  at::Tensor mlp_in;   // [hidden]: post_attention_layernorm → gate, up
  at::Tensor up_down;  // [ffn]: up_proj rows → down_proj columns
};

// Folds `s` into a layer: each norm weight /= s (computed in fp32, rounded once to the norm's dtype),
// the preceding linear's rows /= s, and the following linears' input columns *= s, on `w` (the layer's
// linear weights, [out, in] fp32, by linear; replaced, never written in place). In exact arithmetic
// the layer computes the same function afterwards (tests/export/awq_test.cpp checks it to rounding).
void fold_awq_scales(DecoderLayer& layer, std::map<const Linear*, at::Tensor>& w, const AwqLayerScales& s);

// One mapping's search, for the report and the oracle.
struct AwqSearchStat {
  std::string name;            // "model.layers.0.input_layernorm -> q_proj,k_proj,v_proj"
  double ratio = 0;            // the chosen ratio
  double loss = 0;             // its loss (MSE of the inspected output)
  double identity_loss = 0;    // the loss of ratio 0 (scales 1 without duo scaling; RTN-like)
  std::vector<double> losses;  // every candidate's
};

// What awq_quantize_layer did to one layer.
struct AwqLayerResult {
  AwqLayerScales scales;
  std::vector<AwqSearchStat> searches;
  std::map<std::string, at::Tensor> clip;        // "self_attn.v_proj" → max_val [out, groups]
  std::map<std::string, GptqLinear> quantized;   // "self_attn.q_proj" → codes/scales/zeros (the folded weight)
  std::vector<QuantizedLinearStat> linears;      // module order; names "model.layers.i.self_attn.q_proj"
};

// AWQ of decoder layer `i` in place, on the calibration activations `hs` entering it (each
// [batch, len, hidden] on the model's device, model dtype: a batch of equal-length sequences) and
// `counted` (each [batch·len] bool on the device: the positions whose activations enter the statistics
// and the losses; the others are context only). The clip search's token sample takes every k-th
// counted position in this order.
// The layer's linears must be dense without adapters (merge first). Afterwards each linear holds its
// dequantized quantized weight (model dtype) and the norms hold the folded scales: the layer computes
// what the exported checkpoint computes. Stats: error = trace((W-E) H (W-E)ᵀ) with E the effective
// weight in the original basis (the folded scales divided back out) and H of the linear's original input;
// rtn_error the same for plain AWQ-grid rounding of W. Throws UsageError when nothing is counted.
AwqLayerResult awq_quantize_layer(LlamaModel& model, int64_t i, const std::vector<at::Tensor>& hs,
                                  const std::vector<at::Tensor>& counted, const AwqSettings& s);

// The whole model: every decoder layer in turn (merging its adapters first, like quantize_model), the
// quantized outputs feeding the next. Returns the AWQ GEMM tensors of every decoder-layer linear by HF
// name ("model.layers.0.self_attn.q_proj.qweight" / .qzeros / .scales, on the CPU) and per-linear stats
// comparable to GPTQ's (damp 0). The model is modified in place: linears hold their dequantized
// weights and the RMSNorm weights (input_layernorm, post_attention_layernorm) hold the folded scales,
// so the non-linear tensors of the export must be taken from the model afterwards (state_tensors()).
// `searches` (optional) receives every mapping's search. Throws UsageError without calibration data.
QuantizedModel awq_quantize_model(LlamaModel& model, const CalibrationSet& calib, const AwqSettings& s,
                                  const ConsoleOptions& console = {}, std::vector<AwqSearchStat>* searches = nullptr);

}  // namespace qtrain
