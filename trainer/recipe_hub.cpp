#include "trainer/recipe_hub.h"

#include "data/error.h"

namespace qtrain {
namespace {

// Re-throws a resolution error with the recipe key in front, keeping its exit code.
template <class F>
auto with_context(const std::string& where, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const Error& e) {
    throw Error(e.code(), where + ": " + e.what());
  }
}

std::vector<DataFile> resolve_files(const std::vector<DataFile>& files, const std::string& key, const Recipe& r,
                                    const hub::HubSettings& settings, const hub::HubLog& log) {
  std::vector<DataFile> out;
  for (std::size_t i = 0; i < files.size(); ++i) {
    const std::string written = files[i].path.string();
    const std::string where = r.source.string() + ": " + key + "[" + std::to_string(i) + "] '" + written + "'";
    const auto ref = with_context(where, [&] { return hub::data_ref_for(written, key); });
    if (!ref) {
      out.push_back(files[i]);
      continue;
    }
    // A repository of several data files expands into one entry each, with the entry's weight and format.
    for (const auto& local : with_context(where, [&] { return hub::resolve_data(*ref, settings, log); })) {
      DataFile f = files[i];
      f.path = local;
      out.push_back(f);
    }
  }
  return out;
}

}  // namespace

bool recipe_uses_hub(const Recipe& r) {
  if (hub::model_ref_for(r.model.path.string(), "model.path", r.model.create_if_missing)) return true;
  for (const auto* files : {&r.data.files, &r.data.eval_files})
    for (const auto& f : *files)
      if (hub::data_ref_for(f.path.string(), "data.files")) return true;
  return false;
}

Recipe resolve_hub_ids(const Recipe& r, const hub::HubSettings& settings, const hub::HubLog& log) {
  if (!recipe_uses_hub(r)) return r;
  Recipe out = r;
  out.as_written = WrittenPaths{r.model.path, r.data.files, r.data.eval_files};
  const std::string model = r.model.path.string();
  const std::string where = r.source.string() + ": model.path '" + model + "'";
  if (const auto ref = with_context(where, [&] { return hub::model_ref_for(model, "model.path", r.model.create_if_missing); }))
    out.model.path = with_context(where, [&] { return hub::resolve_model(*ref, settings, log); });
  out.data.files = resolve_files(r.data.files, "data.files", r, settings, log);
  out.data.eval_files = resolve_files(r.data.eval_files, "data.eval_files", r, settings, log);
  return out;
}

Recipe resolve_hub_ids(const Recipe& r, const hub::HubLog& log, const HubResolveOptions& options, const hub::EnvLookup& env) {
  if (!recipe_uses_hub(r)) return r;
  const hub::HubSettings settings = hub::hub_settings_logged(log, env);
  if (!options.model_config_only) return resolve_hub_ids(r, settings, log);
  Recipe out = r;
  const std::string model = r.model.path.string();
  const std::string where = r.source.string() + ": model.path '" + model + "'";
  if (const auto ref = with_context(where, [&] { return hub::model_ref_for(model, "model.path", r.model.create_if_missing); })) {
    out.as_written = WrittenPaths{r.model.path, r.data.files, r.data.eval_files};
    out.model.path = with_context(where, [&] { return hub::resolve_model(*ref, settings, log, {"config.json"}); });
  }
  return out;
}

}  // namespace qtrain
