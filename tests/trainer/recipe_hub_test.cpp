// A recipe's Hub ids (trainer/recipe_hub.h): the recipe hash and resume follow the ids as written, not the
// machine-specific snapshot paths they resolve to; the shipped recipes' ids are recognised without network.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "data/error.h"

#include "trainer/config.h"
#include "trainer/recipe_hub.h"
#include "tests/scratch_dir.h"

namespace qtrain {
namespace {
namespace fs = std::filesystem;

TEST(RecipeHub, HashUsesTheIdsAsWrittenWhereverTheyResolve) {
  test_tools::ScratchDir dir("recipe-hub");
  const fs::path p = dir.path / "r.yaml";
  std::ofstream(p) << "model:\n  path: huggyllama/llama-7b\ndata:\n  files: [hf://datasets/org/data/train.jsonl]\n";
  const Recipe r = load_recipe(p);
  EXPECT_TRUE(recipe_uses_hub(r));
  // What resolve_hub_ids makes on two machines with different caches.
  auto resolved = [&](const std::string& cache) {
    Recipe out = r;
    out.as_written = WrittenPaths{r.model.path, r.data.files, r.data.eval_files};
    out.model.path = cache + "/models--huggyllama--llama-7b/snapshots/91df9b50963e5debc5eb33705c71078a0875b5ff";
    out.data.files[0].path = cache + "/datasets--org--data/snapshots/aa/train.jsonl";
    return out;
  };
  const Recipe a = resolved("/home/a/.cache/huggingface/hub"), b = resolved("/scratch/hf");
  EXPECT_EQ(recipe_hash(a), recipe_hash(r));
  EXPECT_EQ(recipe_hash(b), recipe_hash(r));
  // Negative control: without the ids kept, the paths would make the hashes differ.
  Recipe a_bare = a, b_bare = b;
  a_bare.as_written.reset(), b_bare.as_written.reset();
  EXPECT_NE(recipe_hash(a_bare), recipe_hash(b_bare));
  // config.yaml keeps the snapshot path (loadable as is, e.g. by qtrain export) and says where it came from.
  const std::string yaml = recipe_to_yaml(a);
  EXPECT_NE(yaml.find("path: \"" + a.model.path.string() + "\"  # from the Hub: \"huggyllama/llama-7b\"\n"), std::string::npos) << yaml;
  EXPECT_NE(yaml.find("# from the Hub: [{path: \"hf://datasets/org/data/train.jsonl\""), std::string::npos) << yaml;
  const fs::path again = dir.path / "again.yaml";
  std::ofstream(again) << yaml;
  EXPECT_EQ(load_recipe(again).model.path, a.model.path);
}

TEST(RecipeHub, ShippedRecipes) {
  const fs::path recipes = fs::path(QTRAIN_SOURCE_DIR) / "recipes";
  const Recipe guanaco = load_recipe(recipes / "guanaco.yaml");
  EXPECT_EQ(guanaco.model.path, "huggyllama/llama-7b");
  EXPECT_TRUE(recipe_uses_hub(guanaco));
  // The quick start's model directory looks like org/name but is created locally: never the Hub.
  const Recipe quick = load_recipe(recipes / "quickstart.yaml");
  EXPECT_FALSE(recipe_uses_hub(quick));
  // A recipe without ids comes back unchanged, with nothing fetched (no settings needed).
  const Recipe same = resolve_hub_ids(quick, hub::HubSettings{}, hub::HubLog{std::cerr});
  EXPECT_EQ(recipe_to_yaml(same), recipe_to_yaml(quick));
  EXPECT_FALSE(same.as_written);
}

TEST(RecipeHub, SettingsAreReadOnlyWhenAHubIdIsUsed) {
  // A malformed HF_HUB_ETAG_TIMEOUT cannot stop a recipe of local paths: the environment is not even read.
  const Recipe quick = load_recipe(fs::path(QTRAIN_SOURCE_DIR) / "recipes" / "quickstart.yaml");
  int lookups = 0;
  const hub::EnvLookup env = [&](const std::string& name) -> std::optional<std::string> {
    ++lookups;
    if (name == "HF_HUB_ETAG_TIMEOUT") return std::string("abc");
    return std::nullopt;
  };
  std::ostringstream log;
  const Recipe same = resolve_hub_ids(quick, hub::HubLog{log}, {}, env);
  EXPECT_EQ(recipe_to_yaml(same), recipe_to_yaml(quick));
  EXPECT_EQ(lookups, 0);
  EXPECT_EQ(log.str(), "");
  // With a Hub id the settings are read, and the bad value is a warning (offline here, so nothing is fetched
  // and the error is the empty cache's).
  test_tools::ScratchDir dir("recipe-hub-env");
  const fs::path p = dir.path / "r.yaml";
  std::ofstream(p) << "model:\n  path: huggyllama/llama-7b\ndata:\n  files: [hf://datasets/org/data/train.jsonl]\n";
  const Recipe with_id = load_recipe(p);
  const hub::EnvLookup offline = [&](const std::string& name) -> std::optional<std::string> {
    if (name == "HF_HUB_ETAG_TIMEOUT") return std::string("abc");
    if (name == "HF_HUB_OFFLINE") return std::string("1");
    if (name == "HF_HUB_CACHE") return (dir.path / "cache").string();
    return std::nullopt;
  };
  try {
    resolve_hub_ids(with_id, hub::HubLog{log}, {}, offline);
    ADD_FAILURE() << "an empty cache resolved offline";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("HF_HUB_OFFLINE"), std::string::npos) << e.what();
  }
  EXPECT_NE(log.str().find("[hub] warning: HF_HUB_ETAG_TIMEOUT='abc' is not a positive number of seconds; using the default 10 s"),
            std::string::npos)
      << log.str();
}

}  // namespace
}  // namespace qtrain
