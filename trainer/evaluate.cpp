#include "trainer/evaluate.h"

#include <cmath>

#include "trainer/loss.h"

namespace qtrain {

EvalResult evaluate(const LlamaModel& model, const std::shared_ptr<const ExampleSet>& data, int64_t micro_batch_size,
                    const DataConfig& config, int64_t max_batches, const std::function<bool()>& stop,
                    const ConsoleOptions& console) {
  at::NoGradGuard ng;
  Loader loader(data, micro_batch_size, config, config.seed, /*rank=*/0, /*world_size=*/1, /*shuffle=*/false);
  int64_t n = loader.batches_per_epoch();
  if (max_batches > 0) n = std::min(n, max_batches);
  EvalResult r;
  // Sums stay on the device until the end: one synchronisation per evaluation, not two per batch.
  at::Tensor sum = at::zeros({}, at::TensorOptions().dtype(at::kDouble).device(model.device()));
  at::Tensor correct = at::zeros({}, at::TensorOptions().dtype(at::kLong).device(model.device()));
  ProgressLine progress(console, "evaluating", n, "batches");
  for (int64_t i = 0; i < n; ++i) {
    progress.update(i);
    if (stop && stop()) {
      r.interrupted = true;
      return r;
    }
    const Batch b = loader.next();
    if (b.num_target_tokens == 0) continue;
    LossSum ls = causal_lm_loss(model, model.hidden_states(b.input_ids, b.segment_ids, b.positions, nullptr), b.labels);
    sum += ls.sum.to(at::kDouble);
    correct += ls.correct;
    r.tokens += ls.tokens;
  }
  progress.finish("", /*transient=*/true);
  r.loss = r.tokens ? sum.item<double>() / static_cast<double>(r.tokens) : NAN;
  r.token_acc = r.tokens ? static_cast<double>(correct.item<int64_t>()) / static_cast<double>(r.tokens) : NAN;
  return r;
}

}  // namespace qtrain
