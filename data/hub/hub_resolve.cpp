#include "data/hub/hub_resolve.h"

#include <unistd.h>

#include <iostream>

#include "data/hub/hub_snapshot.h"

namespace qtrain::hub {
namespace fs = std::filesystem;
namespace {

// The shape test shared by models and data: a bare id, or an explicit hf:// (which always counts).
bool may_be_bare_id(const std::string& s) {
  if (s.empty() || s.front() == '.' || s.front() == '/' || s.front() == '~') return false;
  std::error_code ec;
  return !fs::exists(fs::path(s), ec) && !fs::is_symlink(fs::path(s), ec);
}

bool is_explicit(const std::string& s) { return s.rfind("hf://", 0) == 0; }

}  // namespace

std::optional<HubRef> model_ref_for(const std::string& written, const std::string& what, bool create_if_missing) {
  if (is_explicit(written)) return parse_model_ref(written, what);
  if (create_if_missing || !may_be_bare_id(written)) return std::nullopt;
  return parse_model_ref(written, what);
}

std::optional<HubRef> data_ref_for(const std::string& written, const std::string& what) {
  if (is_explicit(written)) return parse_data_ref(written, what);
  if (!may_be_bare_id(written)) return std::nullopt;
  return parse_data_ref(written, what);
}

HubLog stderr_log() { return HubLog{std::cerr, ::isatty(STDERR_FILENO) == 1}; }

HubSettings hub_settings_logged(const HubLog& log, const EnvLookup& env) {
  HubSettings s = hub_settings_from_env(env);
  for (const auto& w : s.warnings) log.out << "[hub] warning: " << w << "\n";
  return s;
}

fs::path resolve_model(const HubRef& ref, const HubSettings& settings, const HubLog& log, const std::vector<std::string>& only) {
  return fetch_snapshot(ref, settings, log.out, log.terminal, only).dir;
}

std::vector<fs::path> resolve_data(const HubRef& ref, const HubSettings& settings, const HubLog& log) {
  const Snapshot s = fetch_snapshot(ref, settings, log.out, log.terminal);
  std::vector<fs::path> out;
  for (const auto& f : s.files) out.push_back(s.dir / f);
  return out;
}

}  // namespace qtrain::hub
