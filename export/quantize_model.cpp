#include "export/quantize_model.h"

#include <chrono>
#include <optional>

#include "data/error.h"
#include "data/io/gptq_format.h"
#include "export/gptq.h"
#include "trainer/model/linear_modules.h"

namespace qtrain {
namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// The sub-layers of a Llama decoder layer in true-sequential order (formats.md §5.5). The linears of one
// group read the same input, so one Hessian serves them all; `input_of` is the linear whose input is
// observed.
struct SubLayer {
  std::vector<Linear DecoderLayer::*> linears;
  Linear DecoderLayer::*input_of;
};
const std::vector<SubLayer>& sublayers() {
  static const std::vector<SubLayer> groups = {
      {{&DecoderLayer::k, &DecoderLayer::v, &DecoderLayer::q}, &DecoderLayer::q},
      {{&DecoderLayer::o}, &DecoderLayer::o},
      {{&DecoderLayer::up, &DecoderLayer::gate}, &DecoderLayer::gate},
      {{&DecoderLayer::down}, &DecoderLayer::down},
  };
  return groups;
}

// "self_attn.q_proj" … of each linear of `l`, by address (DecoderLayer::linears() is in kLinearModules order).
std::map<const Linear*, std::string> linear_paths(DecoderLayer& l) {
  std::map<const Linear*, std::string> paths;
  const auto linears = l.linears();
  for (size_t j = 0; j < linears.size(); ++j) paths[linears[j]] = std::string(kLinearModules[j].path);
  return paths;
}

}  // namespace

QuantizedModel quantize_model(LlamaModel& model, const CalibrationSet& calib, const GptqSettings& settings,
                              QuantMethod method, const ConsoleOptions& console) {
  at::NoGradGuard ng;
  if (method == QuantMethod::kGptq && calib.ids.empty())
    throw UsageError("GPTQ needs calibration data (the run's training data or --calib FILE)");
  QuantizedModel out;
  const at::Device dev = model.device();
  // The calibration activations entering the current layer, in batches of equal-length sequences:
  // hs[c] [batch, len, hidden] in the model dtype, counted[c] [batch·len] bool (the positions that enter
  // the statistics), on the device.
  std::vector<at::Tensor> hs, counted;
  for (const CalibrationBatch& b : equal_length_batches(calib)) {
    hs.push_back(model.embed(b.ids));
    counted.push_back(b.counted.to(dev));
  }

  ProgressLine progress(console, method == QuantMethod::kGptq ? "GPTQ: quantizing" : "RTN: quantizing", model.num_layers(),
                        "layers");
  for (int64_t i = 0; i < model.num_layers(); ++i) {
    DecoderLayer& layer = model.layer(i);
    const std::string prefix = "model.layers." + std::to_string(i) + ".";
    const std::map<const Linear*, std::string> paths = linear_paths(layer);
    // Merge this layer only: the full-precision weights GPTQ starts from, float32.
    std::map<const Linear*, at::Tensor> w32;
    for (Linear* l : layer.linears()) {
      MergeLayerStat stat{prefix + paths.at(l)};
      w32[l] = merged_weight(*l, &stat);
      if (l->lora) out.merges.push_back(stat);
      l->weight = w32[l].to(model.dtype());
      l->qweight.reset();
      l->lora.reset();
    }

    // One calibration pass of this layer, feeding `hessians` (observed linear → accumulator).
    auto calibrate = [&](std::map<const Linear*, HessianAccumulator>& hessians) {
      const auto t0 = Clock::now();
      for (size_t s = 0; s < hs.size(); ++s) {
        RunContext ctx;
        ctx.on_linear_input = [&](const Linear& l, const at::Tensor& x) {
          auto it = hessians.find(&l);
          if (it != hessians.end()) it->second.add(x.reshape({-1, x.size(-1)}).index({counted[s]}));  // [counted, in]
        };
        model.run_layer(i, hs[s], model.layer_inputs(hs[s].size(0), hs[s].size(1)), &ctx);
      }
      out.calibrate_seconds += seconds_since(t0);
    };
    auto quantize_group = [&](const SubLayer& g, const HessianAccumulator* h) {
      const auto t0 = Clock::now();
      for (auto member : g.linears) {
        Linear& l = layer.*member;
        const at::Tensor& W = w32.at(&l);
        QuantizedLinearStat st{prefix + paths.at(&l)};
        GptqLinear q;
        if (method == QuantMethod::kGptq) {
          GptqStats gs;
          q = gptq_quantize(W, h->hessian(), settings, &gs);
          st.damp = gs.damp_used;
        } else {
          q = rtn_quantize(W, settings);
        }
        l.weight = q.dequantize(model.dtype());
        if (h && h->tokens() > 0) {
          const at::Tensor H = h->hessian();
          st.error = hessian_error(W, q.dequantize(at::kFloat), H);
          st.rtn_error = method == QuantMethod::kRtn ? st.error : hessian_error(W, rtn_quantize(W, settings).dequantize(at::kFloat), H);
          st.tokens = h->tokens();
        }
        for (auto& [name, t] : pack_gptq_v1(st.name, q)) out.packed[name] = t;
        out.linears.push_back(st);
      }
      out.quantize_seconds += seconds_since(t0);
    };

    if (calib.ids.empty()) {
      for (const auto& g : sublayers()) quantize_group(g, nullptr);
    } else if (settings.true_sequential) {
      // Each group's Hessian from a pass in which the groups before it are already quantized.
      for (const auto& g : sublayers()) {
        std::map<const Linear*, HessianAccumulator> h;
        h.emplace(&(layer.*g.input_of), HessianAccumulator((layer.*g.input_of).shape()[1], dev));
        calibrate(h);
        quantize_group(g, &h.begin()->second);
      }
    } else {
      std::map<const Linear*, HessianAccumulator> h;
      for (const auto& g : sublayers()) h.emplace(&(layer.*g.input_of), HessianAccumulator((layer.*g.input_of).shape()[1], dev));
      calibrate(h);
      for (const auto& g : sublayers()) quantize_group(g, &h.at(&(layer.*g.input_of)));
    }
    // The next layer's inputs: this layer's outputs with every linear quantized.
    if (!calib.ids.empty()) {
      const auto t0 = Clock::now();
      for (auto& h : hs) h = model.run_layer(i, h, model.layer_inputs(h.size(0), h.size(1)));
      out.calibrate_seconds += seconds_since(t0);
    }
    progress.update(i + 1);
  }
  progress.finish();
  return out;
}

}  // namespace qtrain
