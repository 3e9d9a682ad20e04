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

namespace {

// One chunk of the LM head and the cross-entropy, forward and backward by hand, without an autograd graph.
//   rows [n, H] (compute dtype), W = the LM head [V, H] (frozen), t [n] int64 targets.
// The logits [n, V] are made fp32 once and then turned in place into exp(logit - max), the softmax and
// finally the gradient d(scale·Σ CE)/d logits = scale·(softmax - onehot(t)): one fp32 [n, V] buffer (plus
// its compute-dtype matmul input/output in bf16/fp16), where autograd through lm_head + cross_entropy kept
// the logits, their fp32 copy, the log-softmax and its gradient alive together (~14 bytes per logit in bf16).
// Returns d/d rows [n, H] in the compute dtype; adds Σ CE (fp64) and the argmax hits to the running sums.
at::Tensor lm_head_ce_chunk(const LlamaModel& model, const at::Tensor& rows, const at::Tensor& t, double scale,
                            at::Tensor& sum, at::Tensor& correct) {
  // rows → logits through the model's own lm_head with autograd, so its backward (d rows = g·W) is the
  // module's; that graph saves only its inputs (rows, W), never the [n, V] output.
  const at::Tensor r = rows.detach().requires_grad_(true);       // [n, H]
  const at::Tensor logits = model.lm_head(r);                      // [n, V] compute dtype
  at::Tensor g;                                                    // [n, V] fp32: becomes the gradient
  {
    at::NoGradGuard ng;
    // fp32: the matmul's own output buffer (not saved by autograd, so it may be overwritten); else a copy.
    g = logits.scalar_type() == at::kFloat ? logits.detach() : logits.detach().to(at::kFloat);
    correct += (g.argmax(-1) == t).sum();
    const at::Tensor tt = t.unsqueeze(1);                          // [n, 1]
    const at::Tensor target_logit = g.gather(1, tt);               // [n, 1]
    const at::Tensor mx = std::get<0>(g.max(1, /*keepdim=*/true)); // [n, 1]
    g.sub_(mx).exp_();                                             // exp(z - max)
    const at::Tensor se = g.sum(1, /*keepdim=*/true);              // [n, 1]
    // CE = logsumexp(z) - z[t] = log(Σ exp(z - max)) + max - z[t] per row, summed in fp64.
    sum += (se.log() + mx - target_logit).sum(at::kDouble);
    g.div_(se);                                                    // softmax
    g.scatter_add_(1, tt, at::full({t.size(0), 1}, -1.0f, g.options()));  // softmax - onehot(t)
    g.mul_(scale);                                                 // d(scale·Σ CE)/d logits
  }
  logits.backward(g.scalar_type() == logits.scalar_type() ? g : g.to(logits.scalar_type()));
  return r.grad();                                                 // [n, H]
}

}  // namespace

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
    // Each chunk's gradient lands in its own rows of `grad` (distinct rows, so the scatter is deterministic),
    // and its fp32 logits are freed before the next chunk.
    const at::Tensor g = lm_head_ce_chunk(model, states.index_select(0, idx), s.targets.narrow(0, i, n), scale, sum,
                                          out.correct);
    at::NoGradGuard ng;
    if (!grad.defined()) grad = at::zeros_like(states);
    grad.index_copy_(0, idx, g.to(grad.scalar_type()));
  }
  out.sum = sum;
  if (out.tokens > 0) hidden.backward(grad.view(hidden.sizes()));  // one backward through the decoder layers
  return out;
}

}  // namespace qtrain
