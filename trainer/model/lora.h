// Attaching a PEFT adapter from disk to a model (the file format itself is data/io/peft_adapter.h).
#pragma once

#include <filesystem>

#include <ATen/ATen.h>

#include "trainer/model/model.h"

namespace qtrain {

// Attaches the adapter in `dir` to `model` (its r, alpha, rsLoRA and target modules; every tensor must
// match a module of the model by name and shape). dtype: the adapter weights' dtype in the model.
void apply_peft_adapter(LlamaModel& model, const std::filesystem::path& dir, at::ScalarType dtype = at::kFloat);

}  // namespace qtrain
