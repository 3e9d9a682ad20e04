// YAML recipes and --set overrides (trainer/config.cpp), then the --print-config output read back:
// it must load to the same recipe (same printout, same hash), since run directories keep it.
// Input parts: recipe.yaml | up to three --set overrides (empty = none).
#include "tests/fuzz/fuzz_util.h"
#include "trainer/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  namespace fz = qtrain::fuzz;
  const auto parts = fz::split_parts(data, size, 4);
  const auto dir = fz::fresh_dir("recipe");
  const auto file = dir / "recipe.yaml";
  fz::write_file(file, parts[0]);
  std::vector<std::string> overrides;
  for (size_t i = 1; i < parts.size(); ++i)
    if (!parts[i].empty()) overrides.emplace_back(parts[i]);

  qtrain::Recipe r;
  if (!fz::expect_clean_errors({file.string(), "--set"}, [&] { r = qtrain::load_recipe(file, overrides); })) return 0;
  const std::string printed = qtrain::recipe_to_yaml(r), hash = qtrain::recipe_hash(r);
  // Every number in a loaded recipe is finite (a NaN passes range checks written as comparisons).
  for (const char* bad : {": nan", ": -nan", ": inf", ": -inf"})
    if (printed.find(bad) != std::string::npos) fz::finding("a loaded recipe holds a non-finite number", "-", printed);

  const auto again = dir / "printed.yaml";
  fz::write_file(again, printed);
  qtrain::Recipe r2;
  try {
    r2 = qtrain::load_recipe(again);
  } catch (const std::exception& e) {
    fz::finding("--print-config output does not load back", typeid(e).name(), std::string(e.what()) + "\n" + printed);
  }
  if (qtrain::recipe_to_yaml(r2) != printed || qtrain::recipe_hash(r2) != hash)
    fz::finding("--print-config output loads to another recipe", "-", printed + "\n---\n" + qtrain::recipe_to_yaml(r2));
  return 0;
}
