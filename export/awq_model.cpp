#include "export/awq_model.h"

#include <chrono>

#include "data/error.h"
#include "data/io/awq_format.h"
#include "export/gptq.h"
#include "export/merge.h"
#include "trainer/model/linear_modules.h"

namespace qtrain {
namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// "self_attn.q_proj" for a linear of `l` (kLinearModules order is DecoderLayer::linears() order).
std::string linear_path(const DecoderLayer& l, const Linear* p) {
  const auto ls = l.linears();
  for (std::size_t j = 0; j < ls.size(); ++j)
    if (ls[j] == p) return std::string(kLinearModules[j].path);
  throw UsageError("AWQ: a linear that is not part of its decoder layer");
}

// The calibration statistics of one linear input over the counted positions: AutoAWQ's per-channel
// mean |x| (an fp32 sum), the Hessian 2/n·Σxxᵀ (the block-free losses and the report's error), and the
// clip search's token sample (every `step`-th counted position of the whole set, in order).
struct InputStats {
  at::Tensor abs_sum;  // [in] fp32
  HessianAccumulator h;
  std::vector<at::Tensor> sample;  // [k, in] fp32 pieces

  InputStats(int64_t in, at::Device dev)
      : abs_sum(at::zeros({in}, at::TensorOptions().dtype(at::kFloat).device(dev))), h(in, dev) {}
  // xc [c, in]: the counted positions of one sequence, which start at position `offset` of the set.
  void add(const at::Tensor& xc, int64_t offset, int64_t step) {
    abs_sum += xc.abs().to(at::kFloat).sum(0);
    h.add(xc);
    const int64_t first = (step - offset % step) % step;
    if (first < xc.size(0))
      sample.push_back(xc.slice(0, first, xc.size(0), step).to(at::kFloat));
  }
  at::Tensor mean() const { return abs_sum / static_cast<double>(h.tokens()); }
  at::Tensor clip_sample() const { return at::cat(sample, 0); }
};

// Σ over the counted positions of (a - b)², the difference in the compute dtype, the sum in fp32
// (AutoAWQ _compute_loss). a, b [batch, len, d]; counted [batch·len] bool.
double squared_error(const at::Tensor& a, const at::Tensor& b, const at::Tensor& counted) {
  const at::Tensor d = (a - b).reshape({-1, a.size(-1)}).index({counted});
  return d.to(at::kFloat).pow(2).sum().item<double>();
}

at::Tensor ones_if_undefined(const at::Tensor& s, int64_t n, at::Device dev) {
  return s.defined() ? s : at::ones({n}, at::TensorOptions().dtype(at::kFloat).device(dev));
}

}  // namespace

void fold_awq_scales(DecoderLayer& layer, std::map<const Linear*, at::Tensor>& w, const AwqLayerScales& s) {
  auto check = [](const at::Tensor& sc, int64_t n, const char* what) {
    if (sc.dim() != 1 || sc.size(0) != n)
      throw UsageError(std::string("fold_awq_scales: ") + what + " scales are " + c10::str(sc.sizes()) + ", expected [" +
                       std::to_string(n) + "]");
  };
  // Norm → linears: norm.weight /= s; each linear's input columns *= s.
  auto norm_to = [&](at::Tensor& norm, const std::vector<const Linear*>& next, const at::Tensor& sc, const char* what) {
    check(sc, norm.size(0), what);
    norm = (norm.to(at::kFloat) / sc.to(norm.device())).to(norm.scalar_type());
    for (const Linear* l : next) w.at(l) = w.at(l) * sc.to(w.at(l).device());
  };
  // Linear → linear: the first one's rows (and bias) /= s; the second one's input columns *= s.
  auto linear_to = [&](Linear& prev, const Linear& next, const at::Tensor& sc, const char* what) {
    check(sc, w.at(&prev).size(0), what);
    w.at(&prev) = w.at(&prev) / sc.to(w.at(&prev).device()).unsqueeze(1);
    if (prev.bias.defined()) prev.bias = (prev.bias.to(at::kFloat) / sc.to(prev.bias.device())).to(prev.bias.scalar_type());
    w.at(&next) = w.at(&next) * sc.to(w.at(&next).device());
  };
  if (s.attn_in.defined()) norm_to(layer.input_norm, {&layer.q, &layer.k, &layer.v}, s.attn_in, "input_layernorm");
  if (s.v_o.defined()) linear_to(layer.v, layer.o, s.v_o, "v_proj → o_proj");
  if (s.mlp_in.defined()) norm_to(layer.post_attention_norm, {&layer.gate, &layer.up}, s.mlp_in, "post_attention_layernorm");
  if (s.up_down.defined()) linear_to(layer.up, layer.down, s.up_down, "up_proj → down_proj");
}

namespace {

// awq_quantize_layer with its phase times.
struct TimedLayer {
  AwqLayerResult r;
  double calibrate_seconds = 0, quantize_seconds = 0;
};

TimedLayer quantize_layer(LlamaModel& model, int64_t li, const std::vector<at::Tensor>& hs,
                          const std::vector<at::Tensor>& counted, const AwqSettings& s) {
  at::NoGradGuard ng;
  TimedLayer out;
  AwqLayerResult& r = out.r;
  DecoderLayer& L = model.layer(li);
  const at::ScalarType dt = model.dtype();
  const at::Device dev = model.device();
  const std::string prefix = "model.layers." + std::to_string(li) + ".";
  if (hs.empty() || hs.size() != counted.size())
    throw UsageError("AWQ: layer " + std::to_string(li) + " needs calibration activations (" + std::to_string(hs.size()) +
                     " sequences, " + std::to_string(counted.size()) + " masks)");

  // fp32 masters of the layer's weights: scaled, clipped and quantized from here. w0 keeps the originals.
  std::map<const Linear*, at::Tensor> w, w0;
  for (Linear* l : L.linears()) {
    if (l->lora) throw UsageError(prefix + linear_path(L, l) + ": AWQ needs the adapters merged first");
    w0[l] = l->dense_weight(at::kFloat).clone();  // a copy: the model's tensor may be a view of the checkpoint
    w[l] = w0[l];                                  // replaced, never written in place
    l->weight = l->dense_weight(dt);
    l->qweight.reset();
  }
  // AutoAWQ's llama mapping scales v → o only when the shapes agree (no GQA; llm-awq PR 67).
  const bool v_o = L.v.shape() == L.o.shape();

  // One pass of the unscaled layer: statistics of the four linear inputs, the normed inputs of the
  // attention and the MLP, and their full-precision outputs (the search's references).
  auto t0 = Clock::now();
  int64_t n = 0;
  for (const auto& c : counted) n += c.sum().item<int64_t>();
  if (n == 0) throw UsageError("AWQ: no calibration position is counted (layer " + std::to_string(li) + ")");
  const int64_t step = awq_clip_step(n, s.clip_tokens);
  const auto& cfg = model.config();
  InputStats x1(cfg.hidden_size, dev), xo(L.o.shape()[1], dev), x2(cfg.hidden_size, dev), xd(L.down.shape()[1], dev);
  std::vector<at::Tensor> x1s, x2s, attn_ref, mlp_ref;  // each [1, len, ·]
  std::vector<LlamaModel::LayerInputs> inputs;
  int64_t offset = 0;
  for (std::size_t k = 0; k < hs.size(); ++k) {
    const at::Tensor& idx = counted[k];
    inputs.push_back(model.layer_inputs(hs[k].size(0), hs[k].size(1)));
    RunContext ctx;
    ctx.on_linear_input = [&](const Linear& l, const at::Tensor& x) {
      const at::Tensor xc = x.reshape({-1, x.size(-1)}).index({idx});  // [counted, in]
      if (&l == &L.q) {
        x1s.push_back(x);
        x1.add(xc, offset, step);
      } else if (&l == &L.o) {
        attn_ref.push_back(L.o.forward(x));  // the attention block's output
        xo.add(xc, offset, step);
      } else if (&l == &L.gate) {
        x2s.push_back(x);
        x2.add(xc, offset, step);
      } else if (&l == &L.down) {
        mlp_ref.push_back(L.down.forward(x));  // the MLP's output
        xd.add(xc, offset, step);
      }
    };
    model.run_layer(li, hs[k], inputs.back(), &ctx);
    offset += idx.sum().item<int64_t>();
  }
  out.calibrate_seconds += seconds_since(t0);

  // The scale searches, each on the unscaled layer (AutoAWQ searches all mappings, then applies).
  t0 = Clock::now();
  // Loss of a block (the attention or the MLP) with `ls` replaced by Q(W·s)/s: MSE over counted positions.
  auto block_loss = [&](std::vector<Linear*> ls, bool attention, const std::vector<at::Tensor>& xs,
                        const std::vector<at::Tensor>& ref) {
    return [&, ls, attention](const at::Tensor& sc) {
      for (Linear* l : ls) l->weight = (awq_fake_quantize(w.at(l) * sc, s) / sc).to(dt);
      double sum = 0;
      for (std::size_t k = 0; k < xs.size(); ++k) {
        const at::Tensor y = attention ? model.attention_block(li, xs[k], inputs[k]) : model.mlp_block(li, xs[k]);
        sum += squared_error(y, ref[k], counted[k]);
      }
      for (Linear* l : ls) l->weight = w.at(l).to(dt);
      return sum / (static_cast<double>(n) * static_cast<double>(ref[0].size(-1)));
    };
  };
  // Loss of one linear alone: the same MSE from the Hessian, trace(D H Dᵀ)/(2·out) with D = W - Q(W·s)/s
  // (H = 2/n Σxxᵀ, so this is Σ_tokens ‖D x‖² / (n·out)), in fp32.
  auto linear_loss = [&](const Linear* l, const at::Tensor& H) {
    return [&, l, H](const at::Tensor& sc) {
      const at::Tensor D = w.at(l) - awq_fake_quantize(w.at(l) * sc, s) / sc;
      return (D.mm(H) * D).sum().item<double>() / (2.0 * static_cast<double>(D.size(0)));
    };
  };
  auto search = [&](const std::string& name, const InputStats& x, std::vector<const Linear*> ls,
                    const std::function<double(const at::Tensor&)>& loss) {
    std::vector<at::Tensor> ws;
    for (const Linear* l : ls) ws.push_back(w.at(l));
    const AwqScaleSearch found = awq_search_scales(x.mean(), awq_weight_mean(ws, s.group_size), s, loss);
    r.searches.push_back({prefix + name, found.ratio(s.n_grid), found.losses[found.best], found.losses[0], found.losses});
    return found.scales;
  };
  r.scales.attn_in = search("input_layernorm -> q_proj,k_proj,v_proj", x1, {&L.q, &L.k, &L.v},
                            block_loss({&L.q, &L.k, &L.v}, true, x1s, attn_ref));
  if (v_o) r.scales.v_o = search("v_proj -> o_proj", xo, {&L.o}, linear_loss(&L.o, xo.h.hessian()));
  r.scales.mlp_in = search("post_attention_layernorm -> gate_proj,up_proj", x2, {&L.gate, &L.up},
                           block_loss({&L.gate, &L.up}, false, x2s, mlp_ref));
  r.scales.up_down = search("up_proj -> down_proj", xd, {&L.down}, linear_loss(&L.down, xd.h.hessian()));
  x1s.clear();
  x2s.clear();
  attn_ref.clear();
  mlp_ref.clear();
  fold_awq_scales(L, w, r.scales);

  // The input scale of each linear (its columns were multiplied by it), the output scale (its rows
  // were divided by it), and the statistics of its input.
  struct Io {
    at::Tensor in_scale, out_scale;
    const InputStats* x;
  };
  const std::map<const Linear*, Io> io = {
      {&L.q, {r.scales.attn_in, {}, &x1}},    {&L.k, {r.scales.attn_in, {}, &x1}},
      {&L.v, {r.scales.attn_in, r.scales.v_o, &x1}},
      {&L.o, {r.scales.v_o, {}, &xo}},        {&L.gate, {r.scales.mlp_in, {}, &x2}},
      {&L.up, {r.scales.mlp_in, r.scales.up_down, &x2}},
      {&L.down, {r.scales.up_down, {}, &xd}}};

  // Clip search on the scaled weights with the inputs divided by the scales, all but q and k (the
  // q·k product makes their outputs' error a poor proxy: AutoAWQ's avoid_clipping).
  if (s.apply_clip) {
    for (const Linear* l : {&L.v, &L.o, &L.gate, &L.up, &L.down}) {
      const Io& e = io.at(l);
      at::Tensor X = e.x->clip_sample();
      if (e.in_scale.defined()) X = X / e.in_scale;
      const at::Tensor max_val = awq_search_clip(w.at(l), X, s);
      w.at(l) = awq_apply_clip(w.at(l), max_val, s.group_size);
      r.clip[linear_path(L, l)] = max_val.cpu();
    }
  }

  // Quantize; the model holds the dequantized weights. Stats in the original basis.
  for (Linear* l : L.linears()) {
    const std::string path = linear_path(L, l);
    const Io& e = io.at(l);
    GptqLinear q = awq_quantize(w.at(l), s);
    l->weight = q.dequantize(dt);
    at::Tensor E = q.dequantize(at::kFloat);  // [out, in]: what the folded layer's linear computes, unfolded
    if (e.out_scale.defined()) E = E * e.out_scale.unsqueeze(1);
    E = E / ones_if_undefined(e.in_scale, E.size(1), dev);
    QuantizedLinearStat st{prefix + path};
    const at::Tensor H = e.x->h.hessian();
    st.error = hessian_error(w0.at(l), E, H);
    st.rtn_error = hessian_error(w0.at(l), awq_quantize(w0.at(l), s).dequantize(at::kFloat), H);
    st.tokens = e.x->h.tokens();
    r.linears.push_back(st);
    r.quantized[path] = std::move(q);
  }
  out.quantize_seconds += seconds_since(t0);
  return out;
}

}  // namespace

AwqLayerResult awq_quantize_layer(LlamaModel& model, int64_t i, const std::vector<at::Tensor>& hs,
                                  const std::vector<at::Tensor>& counted, const AwqSettings& s) {
  return quantize_layer(model, i, hs, counted, s).r;
}

QuantizedModel awq_quantize_model(LlamaModel& model, const CalibrationSet& calib, const AwqSettings& s,
                                  const ConsoleOptions& console, std::vector<AwqSearchStat>* searches) {
  at::NoGradGuard ng;
  if (calib.ids.empty()) throw UsageError("AWQ needs calibration data (the run's training data or --calib FILE)");
  if (s.bits != 4) throw UsageError("AWQ: only 4-bit quantization is supported (GEMM packing), found " + std::to_string(s.bits));
  QuantizedModel out;
  const at::Device dev = model.device();
  // The activations entering the current layer, in batches of equal-length sequences: hs[c]
  // [batch, len, hidden] in the model dtype, counted[c] [batch·len] bool, on the device.
  std::vector<at::Tensor> hs, counted;
  for (const CalibrationBatch& b : equal_length_batches(calib)) {
    hs.push_back(model.embed(b.ids));
    counted.push_back(b.counted.to(dev));
  }

  ProgressLine progress(console, "AWQ: searching scales and quantizing", model.num_layers(), "layers");
  for (int64_t i = 0; i < model.num_layers(); ++i) {
    DecoderLayer& layer = model.layer(i);
    const std::string prefix = "model.layers." + std::to_string(i) + ".";
    // Merge this layer only (the others stay 4-bit until their turn).
    for (Linear* l : layer.linears()) {
      MergeLayerStat stat{prefix + linear_path(layer, l)};
      const at::Tensor w32 = merged_weight(*l, &stat);
      if (l->lora) out.merges.push_back(stat);
      l->weight = w32.to(model.dtype());
      l->qweight.reset();
      l->lora.reset();
    }
    TimedLayer t = quantize_layer(model, i, hs, counted, s);
    out.calibrate_seconds += t.calibrate_seconds;
    out.quantize_seconds += t.quantize_seconds;
    for (const QuantizedLinearStat& st : t.r.linears) {
      const std::string path = st.name.substr(prefix.size());
      for (auto& [name, tensor] : pack_awq_gemm(st.name, t.r.quantized.at(path), s.group_size)) out.packed[name] = tensor;
      out.linears.push_back(st);
    }
    if (searches) searches->insert(searches->end(), t.r.searches.begin(), t.r.searches.end());
    // The next layer's inputs: this layer's outputs with every linear quantized.
    const auto t0 = Clock::now();
    for (auto& h : hs) h = model.run_layer(i, h, model.layer_inputs(h.size(0), h.size(1)));
    out.calibrate_seconds += seconds_since(t0);
    progress.update(i + 1);
  }
  progress.finish();
  return out;
}

}  // namespace qtrain
