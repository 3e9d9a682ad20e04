// Held-out evaluation: mean loss and next-token accuracy over the eval split's target tokens, with no
// dropout and no gradients. Used by the loop (before, during and after training).
#pragma once

#include <functional>
#include <memory>

#include "data/dataset/batching.h"
#include "data/progress.h"
#include "trainer/model/model.h"

namespace qtrain {

struct EvalResult {
  double loss = 0;          // mean CE per target token
  double token_acc = 0;     // fraction of targets whose argmax prediction is right
  int64_t tokens = 0;
  bool interrupted = false; // `stop` fired between batches: the numbers are incomplete, don't use them
};

// max_batches: 0 = the whole split. `stop` is polled between batches. A long evaluation shows a
// progress line on `console`, erased at the end (the caller reports the result).
EvalResult evaluate(const LlamaModel& model, const std::shared_ptr<const ExampleSet>& data, int64_t micro_batch_size,
                    const DataConfig& config, int64_t max_batches, const std::function<bool()>& stop = {},
                    const ConsoleOptions& console = {});

}  // namespace qtrain
