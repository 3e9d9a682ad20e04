#include "trainer/loss.h"

namespace qtrain {
namespace {

// Which rows of the flattened hidden states predict a target: row b·T + t predicts labels[b, t+1].
// Selected where the labels live (the loader builds them on the host), so it costs no device
// synchronisation; the hidden states are read in place through a [B·T, H] view, never copied whole.
struct Targets {
  at::Tensor rows;     // [n] int64 on the hidden states' device: flat rows with a target
  at::Tensor targets;  // [n] int64 on the hidden states' device: their target tokens
  int64_t tokens = 0;  // n
};

Targets select_targets(const at::Tensor& hidden, const at::Tensor& labels) {
  TORCH_CHECK(hidden.dim() == 3 && labels.dim() == 2 && hidden.size(0) == labels.size(0) && hidden.size(1) == labels.size(1),
              "causal_lm_loss: hidden must be [B, T, H] and labels [B, T], got ", hidden.sizes(), " and ", labels.sizes());
  const int64_t b = labels.size(0), t = labels.size(1);
  at::Tensor next = at::full({b, t}, -100, labels.options().dtype(at::kLong));  // next[b, t] = labels[b, t+1]
  next.narrow(1, 0, t - 1).copy_(labels.narrow(1, 1, t - 1));
  const at::Tensor flat = next.reshape({-1});
  const at::Tensor rows = (flat != -100).nonzero().view({-1});
  Targets s;
  s.tokens = rows.numel();
  // From pageable host memory these copies are staged by the driver and do not wait for the stream.
  s.rows = rows.to(hidden.device(), /*non_blocking=*/true);
  s.targets = flat.index_select(0, rows).to(hidden.device(), /*non_blocking=*/true);
  return s;
}

}  // namespace

LossSum causal_lm_loss(const LlamaModel& model, const at::Tensor& hidden, const at::Tensor& labels, int64_t chunk_tokens) {
  const Targets s = select_targets(hidden, labels);
  const at::Tensor states = hidden.reshape({-1, hidden.size(2)});  // [B·T, H]
  LossSum out;
  out.tokens = s.tokens;
  out.sum = at::zeros({}, hidden.options().dtype(at::kFloat));
  out.correct = at::zeros({}, at::TensorOptions().dtype(at::kLong).device(hidden.device()));
  if (out.tokens == 0) {
    out.sum = out.sum + hidden.sum() * 0;  // keeps the graph connected (a filler batch contributes 0)
    return out;
  }
  for (int64_t i = 0; i < out.tokens; i += chunk_tokens) {
    const int64_t n = std::min(chunk_tokens, out.tokens - i);
    at::Tensor logits = model.lm_head(states.index_select(0, s.rows.narrow(0, i, n))).to(at::kFloat);  // [n, vocab]
    at::Tensor t = s.targets.narrow(0, i, n);
    out.sum = out.sum + at::cross_entropy_loss(logits, t, {}, at::Reduction::Sum);
    at::NoGradGuard ng;
    out.correct = out.correct + (logits.argmax(-1) == t).sum();
  }
  return out;
}

LossSum causal_lm_loss_backward(const LlamaModel& model, const at::Tensor& hidden, const at::Tensor& labels, double scale,
                                int64_t chunk_tokens) {
  const Targets s = select_targets(hidden, labels);
  const int64_t h = hidden.size(2);
  const at::Tensor states = hidden.detach().reshape({-1, h});  // [B·T, H], the cut: no graph above it
  at::Tensor grad;                                              // [B·T, H]: d(scale·Σ CE)/d hidden
  LossSum out;
  out.tokens = s.tokens;
  out.correct = at::zeros({}, at::TensorOptions().dtype(at::kLong).device(hidden.device()));
  at::Tensor sum = at::zeros({}, at::TensorOptions().dtype(at::kDouble).device(hidden.device()));
  for (int64_t i = 0; i < out.tokens; i += chunk_tokens) {
    const int64_t n = std::min(chunk_tokens, out.tokens - i);
    const at::Tensor idx = s.rows.narrow(0, i, n);
    // Each chunk is its own small graph: rows [n, H] → logits [n, vocab] → CE. Its gradient lands in
    // its own rows of `grad` (distinct rows, so the scatter is deterministic), and its fp32 logits
    // are freed before the next chunk.
    at::Tensor rows = states.index_select(0, idx).requires_grad_(true);
    at::Tensor logits = model.lm_head(rows).to(at::kFloat);
    at::Tensor t = s.targets.narrow(0, i, n);
    at::Tensor ce = at::cross_entropy_loss(logits, t, {}, at::Reduction::Sum);
    (ce * scale).backward();
    at::NoGradGuard ng;
    if (!grad.defined()) grad = at::zeros_like(states);
    grad.index_copy_(0, idx, rows.grad());
    sum += ce.detach().to(at::kDouble);  // stays on the device: no synchronisation per chunk
    out.correct = out.correct + (logits.argmax(-1) == t).sum();
  }
  out.sum = sum;
  if (out.tokens > 0) hidden.backward(grad.view(hidden.sizes()));  // one backward through the decoder layers
  return out;
}

}  // namespace qtrain
