// A recipe's Hub ids made local: model.path and data.files / data.eval_files entries that name Hub
// repositories (the rule is in data/hub/hub_resolve.h) are fetched into the Hugging Face cache and
// replaced by their snapshot paths in a copy of the recipe, which then trains like any local recipe.
// The copy keeps the paths as written (Recipe::as_written), so recipe_hash, and with it --resume, does
// not depend on where a machine's cache is. The recipe file itself and load_recipe never touch the
// network: --print-config and the recipe tests work offline.
#pragma once

#include "data/hub/hub_resolve.h"
#include "trainer/config.h"

namespace qtrain {

// True when some path of the recipe is a Hub id (nothing is fetched).
bool recipe_uses_hub(const Recipe& r);

// The recipe with every Hub id resolved (downloading what the cache lacks); `r` itself when none is.
// Errors name the recipe file and the key: "recipe.yaml: model.path 'org/name': Hub: ...".
Recipe resolve_hub_ids(const Recipe& r, const hub::HubSettings& settings, const hub::HubLog& log);

struct HubResolveOptions {
  bool model_config_only = false;  // `qtrain plan`: model.path gets config.json only, data ids stay as written
};
// The same, with the settings read from `env` only when the recipe uses a Hub id (a recipe of local paths
// never reads them, so a malformed HF_HUB_ETAG_TIMEOUT cannot stop it).
Recipe resolve_hub_ids(const Recipe& r, const hub::HubLog& log, const HubResolveOptions& options = {},
                       const hub::EnvLookup& env = hub::process_env());

}  // namespace qtrain
