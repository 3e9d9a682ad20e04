// Precompiled header shared by every qtrain target (see CMakeLists.txt): the libtorch headers that
// nearly every translation unit needs. Narrow on purpose: no torch/torch.h (nn modules, optim, data).
#pragma once
#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/autograd/variable.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>
