#include "trainer/lr_schedule.h"

#include <algorithm>
#include <cmath>

namespace qtrain {

double learning_rate_at(Schedule s, double base_lr, int64_t step, int64_t warmup, int64_t total) {
  if (step < warmup) return base_lr * static_cast<double>(step) / static_cast<double>(std::max<int64_t>(1, warmup));
  const double progress = static_cast<double>(step - warmup) / static_cast<double>(std::max<int64_t>(1, total - warmup));
  switch (s) {
    case Schedule::kConstant:
      return base_lr;
    case Schedule::kLinear:
      return base_lr * std::max(0.0, 1.0 - progress);
    case Schedule::kCosine:
      return base_lr * std::max(0.0, 0.5 * (1.0 + std::cos(M_PI * progress)));
  }
  return base_lr;
}

}  // namespace qtrain
