// One optimizer step, the only one in qtrain: the loop, the training-parity oracle's tool and the
// benchmark all call train_step, so what they check and measure is what trains.
//
//   micro-batches → token-weighted loss (Σ CE / target tokens of the whole step, all ranks)
//   → backward (LM head chunk by chunk, layers recomputed) → reduce gradients across ranks
//   → global grad norm → clip → optimizer update
//
// One host synchronisation per step: the loss and the gradient norm come back together, because the
// clip factor and the non-finite check need them on the host before the update.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include <ATen/ATen.h>

#include "data/dataset/batching.h"
#include "trainer/model/model.h"
#include "trainer/optimizer.h"

namespace qtrain {

// How ranks combine a step: data parallelism plugs in here without touching the loop. Each hook sums
// across ranks in place; an empty hook is the identity (one process). Every rank calls each hook the
// same number of times with the same shapes (collectives must match): `counts` twice per step, fp64
// [1] on the training device (the target tokens before the forward, the loss sum after the
// backward); `grads` once, with a gradient for every adapter parameter in optimizer order (zeros
// where this rank's micro-batches gave none).
struct StepReduce {
  std::function<void(at::Tensor& counts)> counts;
  std::function<void(const std::vector<at::Tensor>& grads)> grads;
};

struct StepSettings {
  int64_t update = 1;          // 1-based number of this update (Adam's bias correction)
  double lr = 0;               // learning rate of this update
  double max_grad_norm = 0;    // global-norm clipping as transformers does it; 0 = off
};

struct StepResult {
  double loss = 0;          // mean CE over the step's target tokens (all ranks)
  double grad_norm = 0;     // global L2 norm of the adapter gradients before clipping
  double clip_scale = 1;    // what multiplied the gradients in the update
  int64_t tokens = 0;       // target tokens of the step (all ranks)
  bool finite = true;       // false: loss or norm is NaN/Inf and no update was made
  bool interrupted = false; // the stop check fired between micro-batches: no update was made
};

// Runs one step over `micro_batches` (this rank's share) and applies the update unless the loss or
// the norm is not finite. Gradients stay in the parameters' .grad until the next step (tools read
// them). `stop` is polled between micro-batches: when it returns true, the step is abandoned.
StepResult train_step(const LlamaModel& model, Optimizer& optimizer, const std::vector<Batch>& micro_batches,
                      const StepSettings& settings, const RunContext& ctx, const StepReduce& reduce = {},
                      const std::function<bool()>& stop = {});

}  // namespace qtrain
