// The seven linears of a Llama-family decoder layer, under their Hugging Face short names and paths,
// and how a recipe's (or adapter_config.json's) target_modules select among them. The one list of
// these names: the model, the recipe check and the adapter writer all read it.
#pragma once

#include <array>
#include <string>
#include <string_view>
#include <vector>

namespace qtrain {

struct LinearModule {
  std::string_view name;  // short name, as in target_modules: "q_proj"
  std::string_view path;  // within a decoder layer: "self_attn.q_proj"
};

// In module order (the order of a layer's weights in transformers' state dict).
inline constexpr std::array<LinearModule, 7> kLinearModules = {{
    {"q_proj", "self_attn.q_proj"},
    {"k_proj", "self_attn.k_proj"},
    {"v_proj", "self_attn.v_proj"},
    {"o_proj", "self_attn.o_proj"},
    {"gate_proj", "mlp.gate_proj"},
    {"up_proj", "mlp.up_proj"},
    {"down_proj", "mlp.down_proj"},
}};

// Selects every linear module (PEFT's spelling).
inline constexpr std::string_view kAllLinear = "all-linear";

// True for "all-linear" and the short names of kLinearModules.
bool is_target_module_name(std::string_view name);

// "all-linear", q_proj, k_proj, ..., down_proj: for messages that list the valid names.
std::string target_module_names();

// The short names a target_modules list selects: every module when it holds "all-linear", else the
// names themselves in the given order, duplicates dropped. Throws UsageError naming an unknown entry
// and the valid ones.
std::vector<std::string> resolve_target_modules(const std::vector<std::string>& targets);

}  // namespace qtrain
