// The one rule for "is this string a Hub id or a local path?", and the resolution of one that is.
//
// A string names a Hub repository when it is written hf://... (always), or when all of these hold:
//   - nothing exists at that path locally (an existing file or directory always wins),
//   - it is org/name or org/name@revision: exactly one '/' before any '@', no leading '.', '/' or '~',
//   - both parts follow the Hub's naming rule (hub_id.h),
//   - for data files: the last part has no data-file extension (data/train.jsonl is a missing local file),
//   - for model.path: the recipe does not set model.create_if_missing (the quick start creates a local
//     model at runs/quickstart/base, which also looks like org/name).
// Anything else is a local path, used as written.
#pragma once

#include <filesystem>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "data/hub/hub_id.h"
#include "data/hub/hub_settings.h"

namespace qtrain::hub {

// nullopt: a local path. `what` names the setting in errors ("model.path", "--model").
std::optional<HubRef> model_ref_for(const std::string& written, const std::string& what, bool create_if_missing = false);
std::optional<HubRef> data_ref_for(const std::string& written, const std::string& what);

// Where resolution reports progress: stderr, rewritten in place when it is a terminal.
struct HubLog {
  std::ostream& out;
  bool terminal = false;
};
HubLog stderr_log();

// The settings from the environment, their warnings (a malformed timeout replaced by its default) printed
// to `log`. Called only once a Hub id is actually used.
HubSettings hub_settings_logged(const HubLog& log, const EnvLookup& env = process_env());

// The snapshot directory of a model reference (downloading what is missing). `only`: just these files
// (`qtrain plan` needs config.json, not the weights); empty: what a model needs (hub_snapshot.h).
std::filesystem::path resolve_model(const HubRef& ref, const HubSettings& settings, const HubLog& log,
                                    const std::vector<std::string>& only = {});
// The local files of a data reference: one named file, or the repository's data files (hub_snapshot.h).
std::vector<std::filesystem::path> resolve_data(const HubRef& ref, const HubSettings& settings, const HubLog& log);

}  // namespace qtrain::hub
