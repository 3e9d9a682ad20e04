// Tensors by name in a fixed order: adapter weights (PEFT names), optimizer state, gradients.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>

namespace qtrain {

using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

}  // namespace qtrain
