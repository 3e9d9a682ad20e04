// The training job: recipe → NF4 base + LoRA → steps → checkpoints → PEFT adapter (design.md, "The job").
#pragma once

#include <filesystem>
#include <optional>

#include "trainer/config.h"

namespace qtrain {

struct TrainOptions {
  bool dry_run = false;  // validate everything (model config, tokenizer, data) and stop before training
  std::optional<std::filesystem::path> resume;  // a checkpoint dir, or the run dir (latest checkpoint)
  bool plan_check = true;  // on CUDA, refuse a run the memory planner says cannot fit (trainer/memory_plan.h)
};

struct TrainResult {
  int64_t steps = 0;
  double final_loss = 0;
  std::optional<double> eval_loss_first, eval_loss_last;  // held-out loss before and after training
  std::optional<double> eval_acc_first, eval_acc_last;    // held-out next-token accuracy on targets
  bool interrupted = false;
};

TrainResult train(const Recipe& recipe, const TrainOptions& options);

}  // namespace qtrain
