#include "trainer/loss.h"

namespace qtrain {

LossSum causal_lm_loss(const LlamaModel& model, const at::Tensor& hidden, const at::Tensor& labels, int64_t chunk_tokens) {
  TORCH_CHECK(hidden.dim() == 3 && labels.dim() == 2 && hidden.size(0) == labels.size(0) && hidden.size(1) == labels.size(1),
              "causal_lm_loss: hidden must be [B, T, H] and labels [B, T], got ", hidden.sizes(), " and ", labels.sizes());
  const int64_t h = hidden.size(2);
  // Shift: position t predicts token t+1. Keep only positions with a target.
  at::Tensor targets = labels.narrow(1, 1, labels.size(1) - 1).reshape({-1}).to(hidden.device());  // [B·(T-1)]
  at::Tensor states = hidden.narrow(1, 0, hidden.size(1) - 1).reshape({-1, h});                     // [B·(T-1), H]
  at::Tensor keep = (targets != -100).nonzero().view({-1});
  LossSum out;
  out.tokens = keep.numel();
  out.sum = at::zeros({}, hidden.options().dtype(at::kFloat));
  out.correct = at::zeros({}, at::TensorOptions().dtype(at::kLong).device(hidden.device()));
  if (out.tokens == 0) {
    out.sum = out.sum + hidden.sum() * 0;  // keeps the graph connected (a filler batch contributes 0)
    return out;
  }
  for (int64_t i = 0; i < out.tokens; i += chunk_tokens) {
    at::Tensor idx = keep.narrow(0, i, std::min(chunk_tokens, out.tokens - i));
    at::Tensor logits = model.lm_head(states.index_select(0, idx)).to(at::kFloat);  // [n, vocab]
    at::Tensor t = targets.index_select(0, idx);
    out.sum = out.sum + at::cross_entropy_loss(logits, t, {}, at::Reduction::Sum);
    {
      at::NoGradGuard ng;
      out.correct = out.correct + (logits.argmax(-1) == t).sum();
    }
  }
  return out;
}

LossSum causal_lm_loss_backward(const LlamaModel& model, const at::Tensor& hidden, const at::Tensor& labels, double scale,
                                int64_t chunk_tokens) {
  const int64_t hsz = hidden.size(2);
  at::Tensor h = hidden.detach().requires_grad_(true);  // the cut: chunks backpropagate into h.grad
  at::Tensor targets = labels.narrow(1, 1, labels.size(1) - 1).reshape({-1}).to(hidden.device());
  at::Tensor keep = (targets != -100).nonzero().view({-1});
  LossSum out;
  out.tokens = keep.numel();
  out.correct = at::zeros({}, at::TensorOptions().dtype(at::kLong).device(hidden.device()));
  double sum = 0;
  for (int64_t i = 0; i < out.tokens; i += chunk_tokens) {
    at::Tensor idx = keep.narrow(0, i, std::min(chunk_tokens, out.tokens - i));
    at::Tensor states = h.narrow(1, 0, h.size(1) - 1).reshape({-1, hsz}).index_select(0, idx);  // [n, H]
    at::Tensor logits = model.lm_head(states).to(at::kFloat);                                 // [n, vocab]
    at::Tensor t = targets.index_select(0, idx);
    at::Tensor ce = at::cross_entropy_loss(logits, t, {}, at::Reduction::Sum);
    (ce * scale).backward();
    sum += ce.item<double>();
    at::NoGradGuard ng;
    out.correct = out.correct + (logits.argmax(-1) == t).sum();
  }
  out.sum = at::scalar_tensor(sum, at::kDouble);
  if (out.tokens > 0) hidden.backward(h.grad());  // one backward through the decoder layers
  return out;
}

}  // namespace qtrain
