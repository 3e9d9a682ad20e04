#include "trainer/loss.h"

namespace qtrain {
namespace {

// The shifted view shared by both forms: position t predicts labels[t+1]. `keep` lists the flat
// positions that have a target; it is computed where the labels live (the loader builds them on the
// host), so selecting them costs no device synchronisation.
struct Shifted {
  at::Tensor states;   // [B·(T-1), H]: hidden states of the predicting positions (a view when possible)
  at::Tensor targets;  // [B·(T-1)] int64 on the hidden states' device
  at::Tensor keep;     // [n] int64 on the hidden states' device: positions with a target
  int64_t tokens = 0;  // n
};

Shifted shift(const at::Tensor& hidden, const at::Tensor& labels) {
  TORCH_CHECK(hidden.dim() == 3 && labels.dim() == 2 && hidden.size(0) == labels.size(0) && hidden.size(1) == labels.size(1),
              "causal_lm_loss: hidden must be [B, T, H] and labels [B, T], got ", hidden.sizes(), " and ", labels.sizes());
  Shifted s;
  const at::Tensor next = labels.narrow(1, 1, labels.size(1) - 1).reshape({-1});  // [B·(T-1)], labels' device
  const at::Tensor keep = (next != -100).nonzero().view({-1});
  s.tokens = keep.numel();
  s.keep = keep.to(hidden.device(), /*non_blocking=*/true);
  s.targets = next.to(hidden.device(), /*non_blocking=*/true);
  s.states = hidden.narrow(1, 0, hidden.size(1) - 1).reshape({-1, hidden.size(2)});
  return s;
}

}  // namespace

LossSum causal_lm_loss(const LlamaModel& model, const at::Tensor& hidden, const at::Tensor& labels, int64_t chunk_tokens) {
  const Shifted s = shift(hidden, labels);
  LossSum out;
  out.tokens = s.tokens;
  out.sum = at::zeros({}, hidden.options().dtype(at::kFloat));
  out.correct = at::zeros({}, at::TensorOptions().dtype(at::kLong).device(hidden.device()));
  if (out.tokens == 0) {
    out.sum = out.sum + hidden.sum() * 0;  // keeps the graph connected (a filler batch contributes 0)
    return out;
  }
  for (int64_t i = 0; i < out.tokens; i += chunk_tokens) {
    at::Tensor idx = s.keep.narrow(0, i, std::min(chunk_tokens, out.tokens - i));
    at::Tensor logits = model.lm_head(s.states.index_select(0, idx)).to(at::kFloat);  // [n, vocab]
    at::Tensor t = s.targets.index_select(0, idx);
    out.sum = out.sum + at::cross_entropy_loss(logits, t, {}, at::Reduction::Sum);
    at::NoGradGuard ng;
    out.correct = out.correct + (logits.argmax(-1) == t).sum();
  }
  return out;
}

LossSum causal_lm_loss_backward(const LlamaModel& model, const at::Tensor& hidden, const at::Tensor& labels, double scale,
                                int64_t chunk_tokens) {
  at::Tensor h = hidden.detach().requires_grad_(true);  // the cut: chunks backpropagate into h.grad
  const Shifted s = shift(h, labels);                    // states: a view of h, taken once
  LossSum out;
  out.tokens = s.tokens;
  out.correct = at::zeros({}, at::TensorOptions().dtype(at::kLong).device(hidden.device()));
  at::Tensor sum = at::zeros({}, at::TensorOptions().dtype(at::kDouble).device(hidden.device()));
  for (int64_t i = 0; i < out.tokens; i += chunk_tokens) {
    at::Tensor idx = s.keep.narrow(0, i, std::min(chunk_tokens, out.tokens - i));
    at::Tensor logits = model.lm_head(s.states.index_select(0, idx)).to(at::kFloat);  // [n, vocab]
    at::Tensor t = s.targets.index_select(0, idx);
    at::Tensor ce = at::cross_entropy_loss(logits, t, {}, at::Reduction::Sum);
    (ce * scale).backward();
    at::NoGradGuard ng;
    sum += ce.detach().to(at::kDouble);  // stays on the device: no synchronisation per chunk
    out.correct = out.correct + (logits.argmax(-1) == t).sum();
  }
  out.sum = sum;
  if (out.tokens > 0) hidden.backward(h.grad());  // one backward through the decoder layers
  return out;
}

}  // namespace qtrain
