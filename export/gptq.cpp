#include "export/gptq.h"

#include <cmath>
#include <string>
#include <vector>

#include "data/error.h"

namespace qtrain {

namespace {

constexpr int64_t kBlock = 128;  // lazy-batch width (the references' blocksize)
// GPTQModel's damp_auto_increment as formats.md §5.1 gives it: raised by this on each Cholesky failure.
constexpr double kDampIncrement = 0.01;

void check_settings(const GptqSettings& s, const char* who) {
  if (s.bits != 4 && s.bits != 8)
    throw UsageError(std::string(who) + ": bits must be 4 or 8, found " + std::to_string(s.bits));
  if (s.group_size != -1 && s.group_size <= 0)
    throw UsageError(std::string(who) + ": group_size must be -1 (one group) or positive, found " +
                     std::to_string(s.group_size));
  if (!(s.damp_percent >= 0 && s.damp_percent < 1))
    throw UsageError(std::string(who) + ": damp_percent must be in [0, 1), found " + std::to_string(s.damp_percent));
}

void check_weight(const at::Tensor& W, const char* who) {
  if (W.dim() != 2 || !at::isFloatingType(W.scalar_type()))
    throw UsageError(std::string(who) + ": expected a float weight [out, in]");
}

// One grid per group, in the order the groups are formed, stacked into [groups, out].
GptqLinear assemble(const at::Tensor& codes, const std::vector<at::Tensor>& scales, const std::vector<at::Tensor>& zeros,
                    const at::Tensor& g_idx, int bits) {
  GptqLinear q;
  q.bits = bits;
  q.codes = codes.to(at::kByte).contiguous();
  q.scales = at::stack(scales).contiguous();
  q.zeros = at::stack(zeros).to(at::kInt).contiguous();
  q.g_idx = g_idx.to(at::kInt).contiguous();
  return q;
}

}  // namespace

std::pair<at::Tensor, at::Tensor> gptq_grid(const at::Tensor& x, int bits, bool sym) {
  const double maxq = static_cast<double>((1 << bits) - 1);
  const at::Tensor xf = x.to(at::kFloat);
  at::Tensor xmin = at::clamp_max(std::get<0>(xf.min(1)), 0.0);  // min(min(x), 0): zero representable
  at::Tensor xmax = at::clamp_min(std::get<0>(xf.max(1)), 0.0);
  if (sym) {
    xmax = at::maximum(xmin.abs(), xmax);
    // Only rows that reach below zero are mirrored (a row >= 0 keeps xmin = 0: the references' quirk,
    // which wastes the lower half of the grid on such rows; kept for bit-compatibility).
    xmin = at::where(xmin < 0, -xmax, xmin);
  }
  const at::Tensor flat = at::logical_and(xmin == 0, xmax == 0);
  xmin = at::where(flat, at::full_like(xmin, -1.0), xmin);
  xmax = at::where(flat, at::full_like(xmax, 1.0), xmax);
  at::Tensor scale = (xmax - xmin) / maxq;
  at::Tensor zero;
  if (sym) {
    zero = at::full_like(scale, (maxq + 1) / 2);
  } else {
    zero = at::round(-xmin / scale);
    // GPTQ v1 stores zero-1, so a zero of 0 cannot be written (formats.md §5.6, the v1 limitation). It
    // arises when -xmin < scale/2 (a row slice that is all or nearly all >= 0). Such rows get zero 1
    // and scale xmax/(maxq-1): the grid [-scale, (maxq-1)·scale] still covers [xmin, xmax] (−xmin <
    // old scale/2 < new scale) at a step maxq/(maxq-1) times larger. Deviation from the references,
    // which write a corrupt word there.
    const at::Tensor z0 = zero == 0;
    zero = at::where(z0, at::ones_like(zero), zero);
    scale = at::where(z0, xmax / (maxq - 1), scale);
  }
  return {scale, zero};
}

at::Tensor gptq_codes(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& zero, int bits) {
  const double maxq = static_cast<double>((1 << bits) - 1);
  // torch.round is half-to-even, as at::round.
  return at::clamp(at::round(x.to(at::kFloat) / scale.unsqueeze(1)) + zero.unsqueeze(1), 0.0, maxq);
}

GptqLinear rtn_quantize(const at::Tensor& W, const GptqSettings& s) {
  check_settings(s, "rtn_quantize");
  check_weight(W, "rtn_quantize");
  const at::Tensor Wf = W.to(at::kFloat);
  const int64_t in = Wf.size(1);
  const int64_t g = gptq_group_width(in, s.group_size);
  std::vector<at::Tensor> scales, zeros, codes;
  for (int64_t k0 = 0; k0 < in; k0 += g) {
    const at::Tensor slice = Wf.narrow(1, k0, std::min(g, in - k0));  // [out, <=g]
    auto [scale, zero] = gptq_grid(slice, s.bits, s.sym);
    codes.push_back(gptq_codes(slice, scale, zero, s.bits));
    scales.push_back(scale);
    zeros.push_back(zero);
  }
  if (in == 0) throw UsageError("rtn_quantize: weight has no input columns");
  const at::Tensor g_idx = at::floor_divide(at::arange(in, Wf.options().dtype(at::kLong)), g);
  return assemble(at::cat(codes, 1), scales, zeros, g_idx, s.bits);
}

HessianAccumulator::HessianAccumulator(int64_t in, at::Device device, at::ScalarType dtype)
    : in_(in), h_(at::zeros({in, in}, at::TensorOptions().device(device).dtype(dtype))) {
  if (dtype != at::kFloat && dtype != at::kDouble)
    throw UsageError("HessianAccumulator: accumulate in float32 or float64");
}

void HessianAccumulator::add(const at::Tensor& x) {
  if (x.dim() < 1 || x.size(-1) != in_)
    throw UsageError("HessianAccumulator::add: expected inputs [..., " + std::to_string(in_) + "], found " +
                     c10::str(x.sizes()));
  const at::Tensor X = x.reshape({-1, in_}).to(h_.device(), h_.scalar_type());  // [b, in]
  const int64_t b = X.size(0);
  if (b == 0) return;
  // The references' running form: H *= n/(n+b); n += b; H += (sqrt(2/n) X)ᵀ (sqrt(2/n) X).
  h_.mul_(static_cast<double>(n_) / static_cast<double>(n_ + b));
  n_ += b;
  const at::Tensor Xs = X * std::sqrt(2.0 / static_cast<double>(n_));
  h_.addmm_(Xs.t(), Xs);
}

at::Tensor HessianAccumulator::hessian() const { return h_; }

GptqLinear gptq_quantize(const at::Tensor& W_in, const at::Tensor& H_in, const GptqSettings& s, GptqStats* stats) {
  check_settings(s, "gptq_quantize");
  check_weight(W_in, "gptq_quantize");
  const int64_t out = W_in.size(0), in = W_in.size(1);
  if (in == 0) throw UsageError("gptq_quantize: weight has no input columns");
  if (H_in.dim() != 2 || H_in.size(0) != in || H_in.size(1) != in)
    throw UsageError("gptq_quantize: Hessian " + c10::str(H_in.sizes()) + " does not match a weight with " +
                     std::to_string(in) + " input columns");
  const at::Device dev = W_in.device();
  at::Tensor W = W_in.to(at::kFloat).clone();                // [out, in]
  at::Tensor H = H_in.to(dev, at::kFloat).clone();           // [in, in]
  if (!at::isfinite(H).all().item<bool>())
    throw InputError("gptq_quantize: the Hessian holds non-finite values (the calibration activations overflowed?)");
  const int64_t g = gptq_group_width(in, s.group_size);
  const bool grouped = s.group_size != -1;
  const auto lopt = at::TensorOptions().device(dev).dtype(at::kLong);

  // One group (group_size -1): the grid comes from the whole weight before dead columns are zeroed, as
  // the references call find_params first.
  at::Tensor cur_scale, cur_zero;
  if (!grouped) std::tie(cur_scale, cur_zero) = gptq_grid(W, s.bits, s.sym);

  // Dead inputs (never active): H[d,d] = 1 keeps H invertible; their weights cannot matter, so 0.
  const at::Tensor dead = H.diagonal() == 0;  // [in]
  const int64_t n_dead = dead.sum().item<int64_t>();
  if (n_dead > 0) {
    H.diagonal().masked_fill_(dead, 1.0);
    W.masked_fill_(dead.unsqueeze(0), 0.0);
  }

  // static_groups: every group's grid from the unmodified weight in the original column order.
  std::vector<at::Tensor> static_scale, static_zero;
  if (grouped && s.static_groups)
    for (int64_t k0 = 0; k0 < in; k0 += g) {
      auto [sc, z] = gptq_grid(W.narrow(1, k0, std::min(g, in - k0)), s.bits, s.sym);
      static_scale.push_back(sc);
      static_zero.push_back(z);
    }

  // desc_act: process columns by decreasing diag(H); groups then form in that order.
  at::Tensor perm, invperm;
  std::vector<int64_t> perm_host;
  if (s.desc_act) {
    perm = at::argsort(H.diagonal(), /*stable=*/true, /*dim=*/0, /*descending=*/true);  // [in]
    W = W.index_select(1, perm);
    H = H.index_select(0, perm).index_select(1, perm);
    invperm = at::argsort(perm);
    const at::Tensor ph = perm.cpu();
    perm_host.assign(ph.data_ptr<int64_t>(), ph.data_ptr<int64_t>() + in);
  }

  // Damping relative to mean(diag H); on a Cholesky failure raise it (GPTQModel's auto-increment) while < 1.
  // mean over a contiguous copy, as torch.mean(torch.diag(H)) in the references: a strided diagonal view
  // sums in another order and moves the damping by an ulp, which the whole result then inherits.
  const at::Tensor mean_diag = at::diag(H).mean();
  double damp = s.damp_percent;
  int retries = 0;
  at::Tensor Hinv;  // [in, in] upper Cholesky factor of the damped H⁻¹
  while (true) {
    if (damp >= 1.0)
      throw InputError("gptq_quantize: the Hessian is not positive definite even with damping " +
                       std::to_string(s.damp_percent) + " raised to 1 (" + std::to_string(retries) +
                       " retries): the calibration inputs are degenerate");
    at::Tensor Hd = H.clone();
    Hd.diagonal().add_(mean_diag * damp);
    auto [L, info] = at::linalg_cholesky_ex(Hd);
    if (info.item<int64_t>() == 0) {
      auto [U, info2] = at::linalg_cholesky_ex(at::cholesky_inverse(L), /*upper=*/true);
      if (info2.item<int64_t>() == 0 && at::isfinite(U).all().item<bool>()) {
        Hinv = U;
        break;
      }
    }
    damp += kDampIncrement;
    ++retries;
  }

  at::Tensor codes = at::zeros({out, in}, W.options());  // [out, in] in processing order
  std::vector<at::Tensor> scales, zeros;                 // one per group, in the order groups are formed
  at::Tensor losses = at::zeros({}, W.options());
  for (int64_t i1 = 0; i1 < in; i1 += kBlock) {
    const int64_t i2 = std::min(i1 + kBlock, in), count = i2 - i1;
    at::Tensor W1 = W.narrow(1, i1, count).clone();               // [out, count]
    at::Tensor Err1 = at::zeros({out, count}, W.options());       // [out, count]
    const at::Tensor Hinv1 = Hinv.narrow(0, i1, count).narrow(1, i1, count);  // [count, count]
    const at::Tensor dg = Hinv1.diagonal();
    for (int64_t i = 0; i < count; ++i) {
      const int64_t col = i1 + i;
      if (grouped) {
        if (!s.static_groups) {
          // Group start in processing order: the grid from W as of this block's start (the references
          // read W, not the in-block updated W1, when a group starts inside a block).
          if (col % g == 0) {
            std::tie(cur_scale, cur_zero) = gptq_grid(W.narrow(1, col, std::min(g, in - col)), s.bits, s.sym);
            scales.push_back(cur_scale);
            zeros.push_back(cur_zero);
          }
        } else {
          const int64_t orig = s.desc_act ? perm_host[col] : col;
          cur_scale = static_scale[orig / g];
          cur_zero = static_zero[orig / g];
        }
      }
      const at::Tensor w = W1.select(1, i);  // [out]
      const at::Tensor c = gptq_codes(w.unsqueeze(1), cur_scale, cur_zero, s.bits).squeeze(1);
      const at::Tensor q = cur_scale * (c - cur_zero);
      codes.select(1, col).copy_(c);
      const at::Tensor d = dg[i];
      const at::Tensor diff = w - q;
      losses += (diff * diff).sum() / (d * d) / 2;
      const at::Tensor err = diff / d;  // [out]
      W1.narrow(1, i, count - i).sub_(at::outer(err, Hinv1[i].narrow(0, i, count - i)));
      Err1.select(1, i).copy_(err);
    }
    if (i2 < in) W.narrow(1, i2, in - i2).sub_(Err1.matmul(Hinv.narrow(0, i1, count).narrow(1, i2, in - i2)));
  }

  at::Tensor g_idx;  // [in]
  if (!grouped) {
    scales.push_back(cur_scale);
    zeros.push_back(cur_zero);
    g_idx = at::zeros({in}, lopt);
  } else if (s.static_groups) {
    scales = static_scale;
    zeros = static_zero;
    g_idx = at::floor_divide(at::arange(in, lopt), g);  // original-order groups: trivial even with desc_act
  } else if (s.desc_act) {
    g_idx = at::floor_divide(invperm, g);  // column j was processed at position invperm[j], in permuted group invperm[j] / g
  } else {
    g_idx = at::floor_divide(at::arange(in, lopt), g);
  }
  if (s.desc_act) codes = codes.index_select(1, invperm);

  if (stats) {
    stats->damp_used = damp;
    stats->retries = retries;
    stats->error = losses.item<double>();
    stats->dead_columns = n_dead;
  }
  return assemble(codes, scales, zeros, g_idx, s.bits);
}

double hessian_error(const at::Tensor& W, const at::Tensor& Q, const at::Tensor& H) {
  if (W.sizes() != Q.sizes() || W.dim() != 2 || H.dim() != 2 || H.size(0) != W.size(1) || H.size(1) != W.size(1))
    throw UsageError("hessian_error: shapes W " + c10::str(W.sizes()) + ", Q " + c10::str(Q.sizes()) + ", H " +
                     c10::str(H.sizes()) + " do not match");
  const at::Tensor D = W.to(at::kDouble) - Q.to(W.device(), at::kDouble);  // [out, in]
  return (D.mm(H.to(W.device(), at::kDouble)) * D).sum().item<double>();
}

}  // namespace qtrain
