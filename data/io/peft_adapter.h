// LoRA adapters in PEFT's on-disk format (formats.md §3): adapter_config.json (sorted keys, indent 2)
// and adapter_model.safetensors with `base_model.model.<module>.lora_A.weight` [r, in] and
// `...lora_B.weight` [out, r]. What PEFT loads onto transformers and what vLLM serves (its rules are
// checked before writing: rank, alpha, target modules present; no DoRA, no modules_to_save, bias none).
#pragma once

#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>

namespace qtrain {

struct AdapterInfo {
  int64_t r = 8;
  double alpha = 8;
  double dropout = 0;
  bool rslora = false;
  std::vector<std::string> target_modules;  // short names, e.g. {"down_proj", "q_proj"}
  std::string base_model;                   // base_model_name_or_path
};

using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

// Writes `dir` atomically and durably (AtomicDirectory: an existing adapter is moved aside, replaced,
// then deleted).
// Throws std::runtime_error naming the tensor when a value is not finite or a shape is not LoRA's.
void save_peft_adapter(const std::filesystem::path& dir, const NamedTensors& lora, const AdapterInfo& info,
                       at::ScalarType dtype = at::kFloat);

// Reads an adapter written by us or by PEFT: the tensors by name, and its config. Throws InputError.
NamedTensors load_peft_adapter(const std::filesystem::path& dir, AdapterInfo* info);

}  // namespace qtrain
