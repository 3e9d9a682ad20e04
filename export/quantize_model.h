// The layer-by-layer quantization of a whole model (formats.md §5.5): for each decoder layer in turn,
// merge its adapters into the dequantized base, collect the Hessian of every linear's input over the
// calibration set (true-sequential: each sub-layer group sees the earlier groups already quantized),
// quantize (GPTQ, or round-to-nearest), and run the calibration set through the quantized layer to get
// the next layer's inputs. Only one decoder layer is ever merged to full precision; the others stay in
// 4 bits until their turn. Plain libtorch ops on the model's device: the same code on CPU and CUDA.
#pragma once

#include <functional>
#include <map>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "data/io/gptq_settings.h"
#include "data/progress.h"
#include "export/calibration.h"
#include "export/merge.h"
#include "trainer/model/model.h"

namespace qtrain {

enum class QuantMethod { kGptq, kRtn };

struct QuantizedLinearStat {
  std::string name;        // "model.layers.0.self_attn.q_proj"
  // trace((W-Q) H (W-Q)ᵀ) on the calibration activations (gptq.h hessian_error) for this method's Q
  // and for round-to-nearest of the same merged W on the same grid: the report's per-layer GPTQ-vs-RTN
  // comparison. Both 0 when nothing was calibrated (RTN without data).
  double error = 0;
  double rtn_error = 0;
  double damp = 0;         // the damping GPTQ needed (after retries)
  int64_t tokens = 0;      // calibration positions in the Hessian
};

struct QuantizedModel {
  std::map<std::string, at::Tensor> packed;  // GPTQ v1 tensors of every decoder-layer linear, on the CPU
  std::vector<QuantizedLinearStat> linears;  // module order
  std::vector<MergeLayerStat> merges;        // the adapters merged on the way (merge.h)
  double calibrate_seconds = 0;              // layer passes over the calibration set
  double quantize_seconds = 0;               // the quantizer itself
};

// Quantizes every decoder-layer linear of `model` in place: afterwards each holds its dequantized
// quantized weight, dense in the model dtype, so the model computes what the exported checkpoint
// computes (the report evaluates it). `calib` may be empty for kRtn (no statistics then).
// A progress line over the layers goes to `console`.
QuantizedModel quantize_model(LlamaModel& model, const CalibrationSet& calib, const GptqSettings& settings,
                              QuantMethod method, const ConsoleOptions& console = {});

}  // namespace qtrain
