// LoRA attachment: which linears get an adapter (target_modules, linear_modules.h), PEFT's
// initialisation, and attaching an adapter saved on disk (the file format itself is
// data/io/peft_adapter.h). LlamaModel::add_lora and lora_parameters are defined in lora.cpp.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "ops/qlora_linear.h"
#include "trainer/model/linear.h"

namespace qtrain {

class LlamaModel;

// Which linears get LoRA and how (the recipe's lora section, typed).
struct LoraSpec {
  std::vector<std::string> targets = {"all-linear"};  // see resolve_target_modules
  ops::LoraConfig config;
  at::ScalarType dtype = at::kFloat;  // adapter master weights
};

// A PEFT-initialised adapter (A kaiming-uniform from `gen`, B = 0) for a linear of shape {out, in},
// its tensors on `device`, leaves that require grad.
std::shared_ptr<LoraAdapter> make_lora_adapter(const std::vector<int64_t>& shape, const LoraSpec& spec,
                                               at::Generator gen, at::Device device);

// Attaches the adapter in `dir` to `model` (its r, alpha, rsLoRA and target modules; every tensor must
// match a module of the model by name and shape). dtype: the adapter weights' dtype in the model.
void apply_peft_adapter(LlamaModel& model, const std::filesystem::path& dir, at::ScalarType dtype = at::kFloat);

}  // namespace qtrain
