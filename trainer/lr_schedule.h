// Learning-rate schedules as functions of the optimizer step (transformers' get_scheduler semantics):
// linear warmup from 0 over `warmup` steps, then constant, linear decay to 0, or cosine decay to 0 at
// `total` steps. (transformers' plain "constant" ignores warmup; here warmup applies to every schedule,
// and the QLoRA recipe, whose warmup HF ignored, sets warmup_steps: 0 to match it.)
#pragma once

#include <cstdint>

#include "trainer/config.h"

namespace qtrain {

// step is 0-based: the lr used by the (step+1)-th optimizer update.
double learning_rate_at(Schedule s, double base_lr, int64_t step, int64_t warmup, int64_t total);

}  // namespace qtrain
