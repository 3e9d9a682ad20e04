#include "trainer/model/lora.h"

#include <map>

#include <ATen/CPUGeneratorImpl.h>

#include "data/error.h"
#include "data/io/peft_adapter.h"

namespace qtrain {
namespace fs = std::filesystem;

void apply_peft_adapter(LlamaModel& model, const fs::path& dir, at::ScalarType dtype) {
  AdapterInfo info;
  NamedTensors tensors = load_peft_adapter(dir, &info);
  LoraSpec spec;
  spec.targets = info.target_modules;
  spec.config.rank = info.r;
  spec.config.alpha = info.alpha;
  spec.config.scaling = info.rslora ? ops::LoraScaling::kRsLora : ops::LoraScaling::kStandard;
  spec.dtype = dtype;
  model.add_lora(spec, at::make_generator<at::CPUGeneratorImpl>(0));  // values replaced below
  std::map<std::string, at::Tensor> by_name(tensors.begin(), tensors.end());
  at::NoGradGuard ng;
  for (auto& [name, p] : model.lora_parameters()) {
    auto it = by_name.find(name);
    if (it == by_name.end())
      throw InputError((dir / "adapter_model.safetensors").string() + ": no tensor '" + name + "' for a targeted module");
    if (it->second.sizes() != p.sizes())
      throw InputError((dir / "adapter_model.safetensors").string() + ": tensor '" + name + "' has shape " +
                       c10::str(it->second.sizes()) + ", the model needs " + c10::str(p.sizes()));
    p.copy_(it->second);
    by_name.erase(it);
  }
  if (!by_name.empty())
    throw InputError((dir / "adapter_model.safetensors").string() + ": tensor '" + by_name.begin()->first +
                     "' matches no module of the model");
}

}  // namespace qtrain
