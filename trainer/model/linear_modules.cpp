#include "trainer/model/linear_modules.h"

#include <algorithm>

#include "data/error.h"

namespace qtrain {

bool is_target_module_name(std::string_view name) {
  return name == kAllLinear || std::any_of(kLinearModules.begin(), kLinearModules.end(),
                                           [&](const LinearModule& m) { return m.name == name; });
}

std::string target_module_names() {
  std::string out(kAllLinear);
  for (const LinearModule& m : kLinearModules) out += ", " + std::string(m.name);
  return out;
}

std::vector<std::string> resolve_target_modules(const std::vector<std::string>& targets) {
  for (const std::string& t : targets)
    if (!is_target_module_name(t))
      throw UsageError("target_modules: unknown module '" + t + "' (expected one of " + target_module_names() + ")");
  std::vector<std::string> out;
  if (std::find(targets.begin(), targets.end(), kAllLinear) != targets.end()) {
    for (const LinearModule& m : kLinearModules) out.emplace_back(m.name);
    return out;
  }
  for (const std::string& t : targets)
    if (std::find(out.begin(), out.end(), t) == out.end()) out.push_back(t);
  return out;
}

}  // namespace qtrain
