#include "trainer/step.h"

#include <cmath>

#include "trainer/loss.h"

namespace qtrain {

namespace {

// Σ g² over every gradient: an fp64 scalar on the gradients' device, read back with the loss.
at::Tensor sum_of_squares(const std::vector<at::Tensor>& grads, const at::TensorOptions& scalar_options) {
  if (grads.empty()) return at::zeros({}, scalar_options);
  if (grads.front().is_cuda()) {
    // A handful of launches for all gradients instead of three per tensor (448 tensors for a 7B with
    // every linear): torch's multi-tensor L2 norm, per tensor in fp32 (fp32 partial sums for bf16 and fp16
    // gradients too), then squared and summed in fp64. Its bits differ from the CPU path's below, which
    // CPU parity and bit-exact resume depend on; the clip factor only needs the norm to fp32 accuracy.
    const std::vector<at::Tensor> norms = at::_foreach_norm(grads, 2, at::kFloat);  // [] each
    return at::stack(norms).to(at::kDouble).square().sum();
  }
  std::vector<at::Tensor> squares;  // per tensor Σ g² in fp32, summed in fp64
  for (const at::Tensor& g : grads) squares.push_back(g.to(at::kFloat).pow(2).sum().to(at::kDouble));
  return at::stack(squares).sum();
}

}  // namespace

StepResult train_step(const LlamaModel& model, Optimizer& optimizer, const std::vector<Batch>& micro_batches,
                      const StepSettings& settings, const RunContext& ctx, const StepReduce& reduce,
                      const std::function<bool()>& stop) {
  const NamedTensors& params = optimizer.params();
  for (const auto& [name, p] : params) p.mutable_grad() = at::Tensor();
  const at::Device device = model.device();
  StepResult r;

  // The loss is a mean over every target token of the step, on every rank: each micro-batch
  // backpropagates Σ CE / step_tokens, so k micro-batches of b rows equal one batch of k·b rows.
  int64_t tokens = 0;
  for (const Batch& b : micro_batches) tokens += b.num_target_tokens;  // counted on the host by the loader
  if (reduce.counts) {  // the global count is needed before the forward: one synchronisation with ranks
    at::Tensor c = at::full({1}, static_cast<double>(tokens), at::TensorOptions().dtype(at::kDouble).device(device));
    reduce.counts(c);
    tokens = static_cast<int64_t>(c.item<double>());
  }
  r.tokens = tokens;
  const double scale = 1.0 / static_cast<double>(std::max<int64_t>(1, r.tokens));

  at::Tensor loss_sum = at::zeros({}, at::TensorOptions().dtype(at::kDouble).device(device));
  for (const Batch& b : micro_batches) {
    if (stop && stop()) {
      for (const auto& [name, p] : params) p.mutable_grad() = at::Tensor();
      r.interrupted = true;
      return r;
    }
    if (b.num_target_tokens == 0) continue;  // a filler batch: nothing to learn, nothing to add
    const at::Tensor hidden = model.hidden_states(b.input_ids, b.segment_ids, b.positions, &ctx);
    loss_sum += causal_lm_loss_backward(model, hidden, b.labels, scale).sum;
  }

  std::vector<at::Tensor> grads;
  if (reduce.grads) {
    // Every parameter, in order, on every rank: a rank whose batches were all filler still joins.
    for (const auto& [name, p] : params) {
      if (!p.grad().defined()) p.mutable_grad() = at::zeros_like(p);
      grads.push_back(p.grad());
    }
    reduce.grads(grads);
  } else {
    for (const auto& [name, p] : params)
      if (p.grad().defined()) grads.push_back(p.grad());
  }
  if (reduce.counts) {
    at::Tensor c = loss_sum.reshape({1});
    reduce.counts(c);
    loss_sum = c.reshape({});
  }

  // The one synchronisation: [loss sum, Σ grad²] to the host together. Nothing else in a step waits for
  // the device (tests/trainer/step_gpu_sync_test.cpp counts, with c10's sync debug mode).
  const at::Tensor sq = sum_of_squares(grads, loss_sum.options());
  const at::Tensor host = at::stack({loss_sum, sq}).cpu();
  r.loss = r.tokens > 0 ? host[0].item<double>() / static_cast<double>(r.tokens) : 0.0;
  r.grad_norm = std::sqrt(host[1].item<double>());
  r.finite = std::isfinite(r.loss) && std::isfinite(r.grad_norm);
  if (!r.finite) return r;
  // transformers' clip_grad_norm_: scale = max_norm / (norm + 1e-6), capped at 1; applied inside the
  // update (the optimizer multiplies each gradient as it reads it), never to .grad itself.
  r.clip_scale = settings.max_grad_norm > 0 ? std::min(1.0, settings.max_grad_norm / (r.grad_norm + 1e-6)) : 1.0;
  optimizer.step(settings.update, settings.lr, r.clip_scale);
  return r;
}

}  // namespace qtrain
