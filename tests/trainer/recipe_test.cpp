// Recipes: every shipped recipe loads and validates; problems are reported all at once with file,
// line, key and the nearest valid key; --set overrides; the printed config parses back identically.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <tuple>
#include <vector>

#include "data/error.h"
#include "trainer/config.h"

namespace qtrain {
namespace {
namespace fs = std::filesystem;

fs::path write_temp(const std::string& text) {
  fs::path p = fs::temp_directory_path() / ("qtrain-recipe-" + std::to_string(std::random_device{}()) + ".yaml");
  std::ofstream(p) << text;
  return p;
}

std::string error_of(const fs::path& p, const std::vector<std::string>& sets = {}) {
  try {
    load_recipe(p, sets);
  } catch (const UsageError& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(Recipe, EveryShippedRecipeLoadsAndRoundTrips) {
  fs::path dir = fs::path(QTRAIN_SOURCE_DIR) / "recipes";
  int n = 0;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.path().extension() != ".yaml") continue;
    ++n;
    Recipe r = load_recipe(e.path());
    // --print-config output is itself a valid recipe that resolves to the same values.
    const fs::path again = write_temp(recipe_to_yaml(r));
    Recipe r2 = load_recipe(again);
    EXPECT_EQ(recipe_to_yaml(r2), recipe_to_yaml(r)) << e.path();
    EXPECT_EQ(recipe_hash(r2), recipe_hash(r)) << e.path();
    fs::remove(again);
  }
  EXPECT_GE(n, 2) << "recipes/ should hold at least guanaco.yaml and quickstart.yaml";
}

// --print-config prints each number as the shortest decimal that parses back to the same double: the
// defaults read as written (dropout 0.05, not 0.050000000000000003), and a value with no short form
// (0.1 + 0.2) keeps all its digits, so the printed recipe re-loads to bit-identical values.
TEST(Recipe, PrintConfigIsShortestAndReloadsIdentically) {
  const fs::path p = write_temp("model:\n  path: m\ndata:\n  files: [a.jsonl]\n");
  const double third = 1.0 / 3.0, awkward = 0.1 + 0.2;
  char third_text[40], awkward_text[40];
  std::snprintf(third_text, sizeof third_text, "%.17g", third);
  std::snprintf(awkward_text, sizeof awkward_text, "%.17g", awkward);
  const Recipe r = load_recipe(p, {std::string("training.weight_decay=") + third_text,
                                   std::string("lora.dropout=") + awkward_text, "training.learning_rate=2e-4"});
  ASSERT_EQ(r.training.weight_decay, third);
  ASSERT_EQ(r.lora.dropout, awkward);
  const std::string yaml = recipe_to_yaml(r);
  EXPECT_NE(yaml.find("dropout: 0.30000000000000004\n"), std::string::npos) << yaml;
  EXPECT_NE(yaml.find("learning_rate: 2e-04\n"), std::string::npos) << yaml;
  EXPECT_NE(yaml.find("beta2: 0.999\n"), std::string::npos) << yaml;
  EXPECT_NE(yaml.find("eps: 1e-08\n"), std::string::npos) << yaml;

  const fs::path again = write_temp(yaml);
  const Recipe r2 = load_recipe(again);
  // Exact equality on purpose: a printed value that lost a bit fails here.
  for (const auto& [name, a, b] : std::vector<std::tuple<std::string, double, double>>{
           {"lora.alpha", r.lora.alpha, r2.lora.alpha},
           {"lora.dropout", r.lora.dropout, r2.lora.dropout},
           {"training.epochs", r.training.epochs, r2.training.epochs},
           {"training.learning_rate", r.training.learning_rate, r2.training.learning_rate},
           {"training.max_grad_norm", r.training.max_grad_norm, r2.training.max_grad_norm},
           {"training.weight_decay", r.training.weight_decay, r2.training.weight_decay},
           {"optimizer.beta1", r.optimizer.beta1, r2.optimizer.beta1},
           {"optimizer.beta2", r.optimizer.beta2, r2.optimizer.beta2},
           {"optimizer.eps", r.optimizer.eps, r2.optimizer.eps}})
    EXPECT_EQ(a, b) << name;
  EXPECT_EQ(recipe_to_yaml(r2), yaml);
  EXPECT_EQ(recipe_hash(r2), recipe_hash(r));

  // The default dropout prints as written.
  const std::string defaults = recipe_to_yaml(load_recipe(p));
  EXPECT_NE(defaults.find("dropout: 0.05\n"), std::string::npos) << defaults;
  fs::remove(p);
  fs::remove(again);
}

TEST(Recipe, GuanacoHasTheReferenceValues) {
  fs::path p = fs::path(QTRAIN_SOURCE_DIR) / "recipes" / "guanaco.yaml";
  Recipe r = load_recipe(p);
  EXPECT_EQ(r.lora.r, 64);
  EXPECT_DOUBLE_EQ(r.lora.alpha, 16);
  EXPECT_DOUBLE_EQ(r.lora.dropout, 0.1);
  EXPECT_EQ(r.lora.dtype, DtypeChoice::kBFloat16);  // qlora.py: LoRA modules cast to bf16 under --bf16
  EXPECT_DOUBLE_EQ(r.training.learning_rate, 2e-4);
  EXPECT_EQ(r.training.schedule, Schedule::kConstant);
  EXPECT_EQ(r.training.micro_batch_size * r.training.gradient_accumulation, 16);
  EXPECT_EQ(r.training.max_steps, 1875);
  EXPECT_DOUBLE_EQ(r.training.max_grad_norm, 0.3);
  EXPECT_TRUE(r.optimizer.paged);
  EXPECT_EQ(r.quantization.quant_type, ops::QuantType::kNF4);
  EXPECT_TRUE(r.quantization.double_quant);
  EXPECT_TRUE(r.training.recompute);
  EXPECT_TRUE(r.data.group_by_length);
  EXPECT_EQ(r.data.source_max_len, 16);
  EXPECT_EQ(r.data.target_max_len, 512);
  EXPECT_EQ(r.data.format, DataFormat::kGuanaco);
}

TEST(Recipe, AllProblemsAtOnceWithLinesAndSuggestions) {
  const fs::path p = write_temp(
      "model:\n  path: m\ntraining:\n  learnig_rate: 1e-4\n  micro_batch_size: -2\n  schedule: cosin\n"
      "lora:\n  r: abc\ndata:\n  files: [a.jsonl]\n  formt: alpaca\n");
  const std::string err = error_of(p);
  for (const std::string frag : {"5 problems", ":4: unknown key 'training.learnig_rate' (did you mean 'training.learning_rate'?)",
                                 "training.schedule: 'cosin' is not one of: constant, linear, cosine",
                                 ":8: lora.r: expected an integer, found 'abc'", "did you mean 'data.format'",
                                 "training.micro_batch_size: must be positive, found -2"})
    EXPECT_NE(err.find(frag), std::string::npos) << "missing '" << frag << "' in:\n" << err;
  fs::remove(p);
}

TEST(Recipe, SetOverridesAndValidates) {
  const fs::path p = write_temp("model:\n  path: m\ndata:\n  files: [a.jsonl]\n");
  Recipe r = load_recipe(p, {"training.learning_rate=1e-5", "lora.r=8", "data.packing=true"});
  EXPECT_DOUBLE_EQ(r.training.learning_rate, 1e-5);
  EXPECT_EQ(r.lora.r, 8);
  EXPECT_TRUE(r.data.packing);
  EXPECT_NE(error_of(p, {"lora.dropout=1.5"}).find("lora.dropout: must be in [0, 1)"), std::string::npos);
  EXPECT_NE(error_of(p, {"nonsense"}).find("expected key=value"), std::string::npos);
  EXPECT_NE(error_of(p, {"lora.rank=8"}).find("did you mean 'lora.r'"), std::string::npos);
  EXPECT_NE(error_of(p, {"optimizer.bits=4"}).find("must be 32 or 8"), std::string::npos);
  // The hash ignores what a resumed run may change, and sees what it may not.
  EXPECT_EQ(recipe_hash(load_recipe(p, {"training.max_steps=7"})), recipe_hash(load_recipe(p)));
  EXPECT_NE(recipe_hash(load_recipe(p, {"lora.r=4"})), recipe_hash(load_recipe(p)));
  fs::remove(p);
}

// lora.dtype auto follows the compute dtype (bf16 adapters on CUDA, fp32 on the CPU) and hashes as the
// float32 it replaced as the default; training.tf32 only changes CUDA rounding, so resume may change it.
TEST(Recipe, AdapterDtypeAutoFollowsTheComputeDtype) {
  const fs::path p = write_temp("model:\n  path: m\ndata:\n  files: [a.jsonl]\n");
  const Recipe r = load_recipe(p);
  EXPECT_EQ(r.lora.dtype, DtypeChoice::kAuto);
  EXPECT_TRUE(r.training.tf32);
  EXPECT_EQ(resolved_lora_dtype(r, /*cuda=*/true), DtypeChoice::kBFloat16);
  EXPECT_EQ(resolved_lora_dtype(r, /*cuda=*/false), DtypeChoice::kFloat32);
  EXPECT_EQ(resolved_compute_dtype(r.training, true), DtypeChoice::kBFloat16);
  EXPECT_EQ(resolved_compute_dtype(r.training, false), DtypeChoice::kFloat32);
  const Recipe fp32_compute = load_recipe(p, {"training.compute_dtype=float32"});
  EXPECT_EQ(resolved_lora_dtype(fp32_compute, true), DtypeChoice::kFloat32);
  const Recipe fp32_master = load_recipe(p, {"lora.dtype=float32"});
  EXPECT_EQ(resolved_lora_dtype(fp32_master, true), DtypeChoice::kFloat32);  // fp32 master weights under bf16
  EXPECT_EQ(resolved_lora_dtype(load_recipe(p, {"lora.dtype=bfloat16"}), false), DtypeChoice::kBFloat16);
  EXPECT_EQ(recipe_hash(fp32_master), recipe_hash(r));
  EXPECT_NE(recipe_hash(load_recipe(p, {"lora.dtype=bfloat16"})), recipe_hash(r));
  EXPECT_EQ(recipe_hash(load_recipe(p, {"training.tf32=false"})), recipe_hash(r));
  EXPECT_NE(error_of(p, {"training.tf32=maybe"}).find("training.tf32"), std::string::npos);
  fs::remove(p);
}

// The recipe checks the blocksize with the op's own rule (ops::valid_blocksize) and lists the choices.
TEST(Recipe, BlocksizeIsCheckedByTheOpsRule) {
  const fs::path p = write_temp("model:\n  path: m\ndata:\n  files: [a.jsonl]\n");
  for (const char* bad : {"48", "16", "8192", "0", "-64"}) {
    const std::string err = error_of(p, {std::string("quantization.blocksize=") + bad});
    EXPECT_NE(err.find(std::string("quantization.blocksize: must be ") + ops::kBlocksizeChoices + ", found " + bad),
              std::string::npos)
        << err;
  }
  for (const char* good : {"32", "64", "4096"})
    EXPECT_EQ(error_of(p, {std::string("quantization.blocksize=") + good}), "(no error)") << good;
  fs::remove(p);
}

TEST(Recipe, MissingAndMalformedFiles) {
  EXPECT_NE(error_of("/nonexistent/recipe.yaml").find("cannot read the recipe"), std::string::npos);
  const fs::path p = write_temp("model: [unclosed\n");
  EXPECT_NE(error_of(p).find("not valid YAML"), std::string::npos);
  fs::remove(p);
  const fs::path q = write_temp("training:\n  seed: 1\n");
  const std::string err = error_of(q);
  EXPECT_NE(err.find("model.path: missing"), std::string::npos) << err;
  EXPECT_NE(err.find("data.files: missing"), std::string::npos) << err;
  fs::remove(q);
}

}  // namespace
}  // namespace qtrain
