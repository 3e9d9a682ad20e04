#include "data/io/peft_adapter.h"

#include <fstream>

#include <nlohmann/json.hpp>

#include "data/io/atomic_file.h"
#include "data/error.h"
#include "data/io/safetensors.h"
#include "data/json_depth.h"

namespace qtrain {
namespace fs = std::filesystem;

namespace {

void check_tensors(const NamedTensors& lora, const AdapterInfo& info) {
  for (const auto& [name, t] : lora) {
    const bool is_a = name.size() > 14 && name.compare(name.size() - 14, 14, ".lora_A.weight") == 0;
    const bool is_b = name.size() > 14 && name.compare(name.size() - 14, 14, ".lora_B.weight") == 0;
    if (name.rfind("base_model.model.", 0) != 0 || (!is_a && !is_b))
      throw std::runtime_error("adapter tensor '" + name + "' is not named base_model.model.<module>.lora_{A,B}.weight");
    if (t.dim() != 2 || (is_a && t.size(0) != info.r) || (is_b && t.size(1) != info.r))
      throw std::runtime_error("adapter tensor '" + name + "' has shape " + c10::str(t.sizes()) + ", not LoRA rank " +
                               std::to_string(info.r) + (is_a ? " [r, in]" : " [out, r]"));
    if (!at::isfinite(t).all().item<bool>())
      throw std::runtime_error("adapter tensor '" + name + "' holds NaN or Inf; refusing to write a broken adapter");
  }
  if (info.r <= 0 || info.alpha <= 0 || info.target_modules.empty())
    throw std::runtime_error("adapter config needs r > 0, lora_alpha > 0 and target_modules (vLLM requires all three)");
}

}  // namespace

void save_peft_adapter(const fs::path& dir, const NamedTensors& lora, const AdapterInfo& info, at::ScalarType dtype) {
  try {
    check_tensors(lora, info);
  } catch (const std::runtime_error& e) {
    throw std::runtime_error(dir.string() + ": " + e.what());
  }
  nlohmann::json c;  // std::map-backed: keys come out sorted, as PEFT's json.dumps(sort_keys=True)
  c["alpha_pattern"] = nlohmann::json::object();
  c["auto_mapping"] = nullptr;
  c["base_model_name_or_path"] = info.base_model;
  c["bias"] = "none";
  c["fan_in_fan_out"] = false;
  c["inference_mode"] = true;
  c["init_lora_weights"] = true;
  c["layers_pattern"] = nullptr;
  c["layers_to_transform"] = nullptr;
  c["lora_alpha"] = info.alpha;
  c["lora_bias"] = false;
  c["lora_dropout"] = info.dropout;
  c["modules_to_save"] = nullptr;
  c["peft_type"] = "LORA";
  c["r"] = info.r;
  c["rank_pattern"] = nlohmann::json::object();
  c["revision"] = nullptr;
  auto targets = info.target_modules;
  std::sort(targets.begin(), targets.end());
  c["target_modules"] = targets;
  c["task_type"] = "CAUSAL_LM";
  c["use_dora"] = false;
  c["use_rslora"] = info.rslora;

  std::map<std::string, at::Tensor> tensors;
  for (const auto& [name, t] : lora) tensors[name] = t.detach().to(at::kCPU, dtype);

  AtomicDirectory out(dir);  // an older adapter of the same name is replaced only once this one is whole
  safetensors::save(out.path() / "adapter_model.safetensors", tensors);
  write_file_atomic(out.path() / "adapter_config.json", c.dump(2) + "\n");
  out.commit();
}

NamedTensors load_peft_adapter(const fs::path& dir, AdapterInfo* info) {
  const fs::path cfg_path = dir / "adapter_config.json";
  std::ifstream in(cfg_path);
  if (!in) throw InputError(cfg_path.string() + ": cannot open (is this a PEFT adapter directory?)");
  const std::string text((std::istreambuf_iterator<char>(in)), {});
  if (const size_t at = json_too_deep_at(text); at != std::string::npos)
    throw InputError(cfg_path.string() + ": JSON nested deeper than " + std::to_string(kMaxJsonDepth) + " levels at byte " +
                     std::to_string(at));
  nlohmann::json c;
  try {
    c = nlohmann::json::parse(text);
    if (info) {
      info->r = c.at("r").get<int64_t>();
      info->alpha = c.at("lora_alpha").get<double>();
      info->dropout = c.value("lora_dropout", 0.0);
      info->rslora = c.value("use_rslora", false);
      info->target_modules = c.at("target_modules").get<std::vector<std::string>>();
      info->base_model = c.value("base_model_name_or_path", std::string());
    }
    if (c.value("peft_type", std::string("LORA")) != "LORA")
      throw InputError(cfg_path.string() + ": peft_type '" + c["peft_type"].get<std::string>() + "' is not LORA");
    if (c.value("use_dora", false)) throw InputError(cfg_path.string() + ": DoRA adapters are not supported");
  } catch (const nlohmann::json::exception& e) {
    throw InputError(cfg_path.string() + ": " + e.what());
  }
  auto f = safetensors::File::open(dir / "adapter_model.safetensors");
  NamedTensors out;
  for (const auto& name : f->names()) out.emplace_back(name, f->tensor(name).clone());
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  return out;
}

}  // namespace qtrain
