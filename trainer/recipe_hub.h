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

}  // namespace qtrain
