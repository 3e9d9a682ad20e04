#include "export/awq.h"

#include <cmath>
#include <limits>
#include <string>

#include "data/error.h"
#include "data/io/gptq_settings.h"

namespace qtrain {
namespace {

// The columns [begin, begin + groups·width) of a weight, viewed as [out, groups, width]: the full
// groups, then (when group_size does not divide `in`) the shorter last group as a piece of its own.
struct Piece {
  int64_t begin, groups, width;
};
std::vector<Piece> pieces(int64_t in, int64_t group_size) {
  if (in <= 0) throw UsageError("AWQ: a linear needs at least one input column");
  const int64_t w = gptq_group_width(in, group_size), full = in / w;
  std::vector<Piece> p;
  if (full > 0) p.push_back({0, full, w});
  if (in % w != 0) p.push_back({full * w, 1, in % w});
  return p;
}
at::Tensor view_piece(const at::Tensor& W, const Piece& p) {  // [rows, in] → [rows, groups, width]
  return W.narrow(1, p.begin, p.groups * p.width).reshape({W.size(0), p.groups, p.width});
}

struct Grid {
  at::Tensor codes;  // [rows, groups, width] float, 0..15
  at::Tensor scale;  // [rows, groups, 1]
  at::Tensor zero;   // [rows, groups, 1] float
};
// pseudo_quantize_tensor on x [rows, groups, width] (fp32): the grid of each (row, group).
Grid grid(const at::Tensor& x, const AwqSettings& s) {
  if (s.bits != 4) throw UsageError("AWQ: only 4-bit quantization is supported (GEMM packing), found " + std::to_string(s.bits));
  Grid g;
  if (s.zero_point) {
    const at::Tensor mx = x.amax(-1, /*keepdim=*/true), mn = x.amin(-1, /*keepdim=*/true);
    g.scale = (mx - mn).clamp_min(1e-5) / 15.0;
    g.zero = (-at::round(mn / g.scale)).clamp(0, 15);
    g.codes = (at::round(x / g.scale) + g.zero).clamp(0, 15);
  } else {
    // Symmetric: q ∈ [-8, 7] · scale, stored shifted by 8 so GEMM's (q - z)·s reads it unchanged.
    g.scale = x.abs().amax(-1, /*keepdim=*/true).clamp_min(1e-5) / 7.0;
    g.zero = at::full_like(g.scale, 8.0);
    g.codes = at::round(x / g.scale).clamp(-8, 7) + 8.0;
  }
  return g;
}
at::Tensor dequantize(const Grid& g) { return (g.codes - g.zero) * g.scale; }

at::Tensor as_float(const at::Tensor& W, const char* what) {
  if (W.dim() != 2) throw UsageError(std::string("AWQ: ") + what + " must be 2-D [out, in], got " + c10::str(W.sizes()));
  return W.to(at::kFloat);
}

}  // namespace

GptqLinear awq_quantize(const at::Tensor& W_in, const AwqSettings& s) {
  const at::Tensor W = as_float(W_in, "the weight");
  const int64_t out = W.size(0), in = W.size(1);
  std::vector<at::Tensor> codes, scales, zeros;
  for (const Piece& p : pieces(in, s.group_size)) {
    const Grid g = grid(view_piece(W, p), s);
    codes.push_back(g.codes.reshape({out, p.groups * p.width}));
    scales.push_back(g.scale.squeeze(-1));  // [out, groups]
    zeros.push_back(g.zero.squeeze(-1));
  }
  GptqLinear q;
  q.bits = s.bits;
  q.codes = at::cat(codes, 1).to(at::kByte).contiguous();
  // The scales the file stores (fp16), rounded after the codes: a clipped group's extremes sit at exact
  // grid ties (min/scale = -7.5), which a scale rounded first would resolve at random, costing up to
  // half a step at both ends (measured +10% layer-output error on the tiny model).
  q.scales = at::cat(scales, 1).t().to(at::kHalf).to(at::kFloat).contiguous();
  q.zeros = at::cat(zeros, 1).t().to(at::kInt).contiguous();
  q.g_idx = at::floor_divide(at::arange(in, W.options().dtype(at::kLong)), gptq_group_width(in, s.group_size)).to(at::kInt);
  return q;
}

at::Tensor awq_fake_quantize(const at::Tensor& W_in, const AwqSettings& s) {
  const at::Tensor W = as_float(W_in, "the weight");
  std::vector<at::Tensor> parts;
  for (const Piece& p : pieces(W.size(1), s.group_size))
    parts.push_back(dequantize(grid(view_piece(W, p), s)).reshape({W.size(0), p.groups * p.width}));
  return at::cat(parts, 1);
}

at::Tensor awq_weight_mean(const std::vector<at::Tensor>& weights, int64_t group_size) {
  if (weights.empty()) throw UsageError("awq_weight_mean: no weights");
  std::vector<at::Tensor> ws;
  for (const auto& w : weights) ws.push_back(as_float(w, "a weight"));
  const at::Tensor W = at::cat(ws, 0);  // [Σ out, in]
  std::vector<at::Tensor> parts;
  for (const Piece& p : pieces(W.size(1), group_size)) {
    const at::Tensor a = view_piece(W, p).abs();
    parts.push_back((a / (a.amax(-1, /*keepdim=*/true) + 1e-6)).reshape({W.size(0), p.groups * p.width}));
  }
  return at::cat(parts, 1).mean(0);  // [in]
}

at::Tensor awq_candidate_scales(const at::Tensor& x_mean, const at::Tensor& w_mean, double ratio, bool duo_scaling) {
  at::Tensor s = duo_scaling ? (x_mean.pow(ratio) / (w_mean.pow(1.0 - ratio) + 1e-4)).clamp_min(1e-4)
                             : x_mean.pow(ratio).clamp_min(1e-4);
  s = s / (s.max() * s.min()).sqrt();
  return at::where(at::isfinite(s), s, at::ones_like(s));  // AutoAWQ: scales[isinf] = scales[isnan] = 1
}

AwqScaleSearch awq_search_scales(const at::Tensor& x_mean, const at::Tensor& w_mean, const AwqSettings& s,
                                 const std::function<double(const at::Tensor&)>& loss) {
  if (s.n_grid < 1) throw UsageError("AWQ: n_grid must be at least 1, found " + std::to_string(s.n_grid));
  AwqScaleSearch r;
  double best = std::numeric_limits<double>::infinity();
  const at::Tensor xm = x_mean.to(at::kFloat).reshape({-1}), wm = w_mean.to(x_mean.device(), at::kFloat).reshape({-1});
  for (int i = 0; i < s.n_grid; ++i) {
    const at::Tensor scales = awq_candidate_scales(xm, wm, static_cast<double>(i) / s.n_grid, s.duo_scaling);
    const double l = loss(scales);
    r.losses.push_back(l);
    if (l < best) {  // NaN never wins
      best = l;
      r.best = i;
      r.scales = scales;
    }
  }
  if (r.best < 0)
    throw InputError("AWQ scale search: no candidate scale gave a finite loss (non-finite activations or weights)");
  return r;
}

int64_t awq_clip_step(int64_t tokens, int64_t clip_tokens) {
  return clip_tokens <= 0 ? 1 : std::max<int64_t>(1, tokens / clip_tokens);
}

at::Tensor awq_search_clip(const at::Tensor& W_in, const at::Tensor& X_in, const AwqSettings& s) {
  const at::Tensor W = as_float(W_in, "the weight");
  const at::Tensor X = as_float(X_in, "the clip sample").to(W.device());
  if (X.size(1) != W.size(1))
    throw UsageError("awq_search_clip: the sample has " + std::to_string(X.size(1)) + " channels, the weight " +
                     std::to_string(W.size(1)) + " inputs");
  const int steps = static_cast<int>(s.max_shrink * s.n_grid);
  const int64_t out = W.size(0);
  // Rows at a time, so the [rows, groups, tokens] outputs stay small (AutoAWQ: 256 or 64 output channels).
  const int64_t chunk = 256;
  std::vector<at::Tensor> parts;
  for (const Piece& p : pieces(W.size(1), s.group_size)) {
    // Σ_group x·w for every (group, row, token) as one batched matmul over groups: [groups, width, tokens].
    const at::Tensor Xg = view_piece(X, p).permute({1, 2, 0}).contiguous();
    std::vector<at::Tensor> rows;
    for (int64_t r0 = 0; r0 < out; r0 += chunk) {
      const at::Tensor Wp = view_piece(W.narrow(0, r0, std::min(chunk, out - r0)), p).transpose(0, 1).contiguous();  // [groups, rows, width]
      const at::Tensor org_max = Wp.abs().amax(-1, /*keepdim=*/true);  // [groups, rows, 1]
      at::Tensor best_max = org_max.clone();
      at::Tensor min_err = at::full_like(org_max, 1e9);
      const at::Tensor org_out = at::bmm(Wp, Xg);  // [groups, rows, tokens]
      for (int i = 0; i < steps; ++i) {
        const at::Tensor max_val = org_max * (1.0 - static_cast<double>(i) / s.n_grid);
        const at::Tensor cur = at::max(at::min(Wp, max_val), -max_val);
        const at::Tensor q = dequantize(grid(cur, s));
        const at::Tensor err = (at::bmm(q, Xg) - org_out).pow(2).mean(-1, /*keepdim=*/true);
        const at::Tensor better = err < min_err;
        min_err = at::where(better, err, min_err);
        best_max = at::where(better, max_val, best_max);
      }
      rows.push_back(best_max.squeeze(-1).t());  // [rows, groups]
    }
    parts.push_back(at::cat(rows, 0));
  }
  return at::cat(parts, 1);  // [out, groups]
}

at::Tensor awq_apply_clip(const at::Tensor& W_in, const at::Tensor& max_val, int64_t group_size) {
  const at::Tensor W = as_float(W_in, "the weight");
  const int64_t groups = gptq_num_groups(W.size(1), group_size);
  if (max_val.sizes() != at::IntArrayRef{W.size(0), groups})
    throw UsageError("awq_apply_clip: max_val is " + c10::str(max_val.sizes()) + ", expected [" +
                     std::to_string(W.size(0)) + ", " + std::to_string(groups) + "]");
  // [out, groups] → [out, in]: each column takes its group's bound.
  const at::Tensor g_idx = at::floor_divide(at::arange(W.size(1), W.options().dtype(at::kLong)), gptq_group_width(W.size(1), group_size));
  const at::Tensor m = max_val.to(W.device(), at::kFloat).index_select(1, g_idx);
  return at::max(at::min(W, m), -m);
}

}  // namespace qtrain
