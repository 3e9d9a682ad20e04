// The optimizer over the adapter parameters (design.md decision 8). It owns the parameters' optimizer
// state, writes and reads it for checkpoints, and says how much memory it holds, so the loop, the
// checkpointer and the memory planner never look inside it. AdamW with bitsandbytes semantics in two state
// formats (32-bit; 8-bit blockwise, ops/adamw_fused.h), resident on the training device or paged through a
// bounded device pool (trainer/paged_state.h); every combination gives the same bits as its unpaged twin.
#pragma once

#include <memory>
#include <string>

#include "data/io/named_tensors.h"
#include "trainer/config.h"

namespace qtrain {

class PagedState;

class Optimizer {
 public:
  virtual ~Optimizer() = default;

  // The parameters it updates, by PEFT name, in a fixed order (the step clips over all of them).
  virtual const NamedTensors& params() const = 0;

  // One update of every parameter that has a gradient. update: 1-based count of applied updates
  // (bias correction); lr: this update's learning rate; grad_scale multiplies every gradient first
  // (global-norm clipping), so gradients are never rescaled in place.
  virtual void step(int64_t update, double lr, double grad_scale) = 0;

  // The state as named tensors for a checkpoint ("<param>/exp_avg", ...), and back. load_state checks
  // that every tensor is present with the right shape and dtype, naming `source` in its errors.
  virtual std::string kind() const = 0;  // recorded with the state: "adamw_32bit" or "adamw_8bit" (paged or not)
  virtual NamedTensors state() const = 0;
  virtual void load_state(const NamedTensors& state, const std::string& source) = 0;

  virtual int64_t state_bytes() const = 0;  // bytes of optimizer state held on the training device
  virtual int64_t host_state_bytes() const { return 0; }  // paged: the host tier (pinned on CUDA)
  virtual const PagedState* pager() const { return nullptr; }  // tests: the pager's trace and counters
};

// The optimizer the recipe asks for, over `params` (leaf tensors on the training device, one dtype).
// config.device_budget_mb = 0 with paged: every page resident (the trainer passes the planner's figure).
std::unique_ptr<Optimizer> make_optimizer(const OptimizerSection& config, double weight_decay, NamedTensors params);

}  // namespace qtrain
