#include "trainer/model/lora.h"

#include <algorithm>
#include <map>

#include <ATen/CPUGeneratorImpl.h>

#include "data/error.h"
#include "data/io/peft_adapter.h"
#include "trainer/model/linear_modules.h"
#include "trainer/model/model.h"

namespace qtrain {
namespace fs = std::filesystem;

std::shared_ptr<LoraAdapter> make_lora_adapter(const std::vector<int64_t>& shape, const LoraSpec& spec,
                                               at::Generator gen, at::Device device) {
  TORCH_CHECK(shape.size() == 2, "make_lora_adapter: linear shape must be {out, in}, found ", at::IntArrayRef(shape));
  ops::LoraWeights w = ops::init_lora(/*in_features=*/shape[1], /*out_features=*/shape[0], spec.config, gen, spec.dtype);
  auto a = std::make_shared<LoraAdapter>();
  a->A = w.A.to(device).set_requires_grad(true);  // [r, in]
  a->B = w.B.to(device).set_requires_grad(true);  // [out, r]
  a->scale = ops::lora_scale(spec.config);
  a->dropout = spec.config.dropout;
  return a;
}

void LlamaModel::add_lora(const LoraSpec& spec, at::Generator gen) {
  const std::vector<std::string> targets = resolve_target_modules(spec.targets);
  // Module order (layer by layer, q_proj … down_proj), so one seed gives PEFT's draws in PEFT's order.
  for_each_linear([&](const std::string& name, Linear& l) {
    const std::string shortname = name.substr(name.rfind('.') + 1);
    if (std::find(targets.begin(), targets.end(), shortname) == targets.end()) return;
    l.lora = make_lora_adapter(l.shape(), spec, gen, device());
  });
}

std::vector<std::pair<std::string, at::Tensor>> LlamaModel::lora_parameters() const {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for_each_linear([&](const std::string& name, const Linear& l) {
    if (!l.lora) return;
    out.emplace_back("base_model.model." + name + ".lora_A.weight", l.lora->A);
    out.emplace_back("base_model.model." + name + ".lora_B.weight", l.lora->B);
  });
  return out;
}

void apply_peft_adapter(LlamaModel& model, const fs::path& dir, at::ScalarType dtype) {
  AdapterInfo info;
  NamedTensors tensors = load_peft_adapter(dir, &info);
  LoraSpec spec;
  spec.targets = info.target_modules;
  spec.config.rank = info.r;
  spec.config.alpha = info.alpha;
  spec.config.scaling = info.rslora ? ops::LoraScaling::kRsLora : ops::LoraScaling::kStandard;
  spec.dtype = dtype;
  try {
    model.add_lora(spec, at::make_generator<at::CPUGeneratorImpl>(0));  // values replaced below
  } catch (const UsageError& e) {  // an unknown target module is bad input here, not a bad recipe
    throw InputError((dir / "adapter_config.json").string() + ": " + e.what());
  }
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
