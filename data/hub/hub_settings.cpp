#include "data/hub/hub_settings.h"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <fstream>

#include "data/error.h"

namespace qtrain::hub {
namespace {

std::optional<std::string> non_empty(const EnvLookup& env, const std::string& name) {
  auto v = env(name);
  if (v && v->empty()) return std::nullopt;
  return v;
}

// huggingface_hub's expanduser + expandvars on the path variables: "~" is the common case in job scripts.
std::filesystem::path expand_home(const std::string& p, const EnvLookup& env) {
  if (p == "~" || p.rfind("~/", 0) == 0) {
    if (const auto home = non_empty(env, "HOME")) return std::filesystem::path(*home) / p.substr(std::min<std::size_t>(2, p.size()));
  }
  return p;
}

bool truthy(const std::optional<std::string>& v) {
  if (!v) return false;
  std::string u = *v;
  std::transform(u.begin(), u.end(), u.begin(), [](unsigned char c) { return std::toupper(c); });
  return u == "1" || u == "ON" || u == "YES" || u == "TRUE";
}

double seconds(const EnvLookup& env, const std::string& name, double fallback, std::vector<std::string>& warnings) {
  const auto v = non_empty(env, name);
  if (!v) return fallback;
  try {
    std::size_t used = 0;
    const double s = std::stod(*v, &used);
    if (used == v->size() && s > 0) return s;
  } catch (const std::exception&) {
  }
  char def[32];
  std::snprintf(def, sizeof def, "%g s", fallback);
  warnings.push_back(name + "='" + *v + "' is not a positive number of seconds; using the default" +
                     (fallback > 0 ? std::string(" ") + def : std::string("s (10 s to connect, 30 s of stall)")));
  return fallback;
}

std::string trim(std::string s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.pop_back();
  std::size_t i = 0;
  while (i < s.size() && std::isspace(static_cast<unsigned char>(s[i]))) ++i;
  return s.substr(i);
}

}  // namespace

EnvLookup process_env() {
  return [](const std::string& name) -> std::optional<std::string> {
    const char* v = std::getenv(name.c_str());
    return v ? std::optional<std::string>(v) : std::nullopt;
  };
}

HubSettings hub_settings_from_env(const EnvLookup& env) {
  HubSettings s;
  const std::filesystem::path home = expand_home("~", env);
  std::filesystem::path hf_home;
  if (const auto v = non_empty(env, "HF_HOME")) hf_home = expand_home(*v, env);
  else if (const auto x = non_empty(env, "XDG_CACHE_HOME")) hf_home = std::filesystem::path(expand_home(*x, env)) / "huggingface";
  else hf_home = home / ".cache" / "huggingface";

  if (const auto v = non_empty(env, "HF_HUB_CACHE")) s.cache_dir = expand_home(*v, env);
  else if (const auto legacy = non_empty(env, "HUGGINGFACE_HUB_CACHE")) s.cache_dir = expand_home(*legacy, env);
  else s.cache_dir = hf_home / "hub";

  if (const auto v = non_empty(env, "HF_ENDPOINT")) {
    s.endpoint = *v;
    while (!s.endpoint.empty() && s.endpoint.back() == '/') s.endpoint.pop_back();
  }

  if (const auto v = non_empty(env, "HF_TOKEN")) {
    s.token = trim(*v), s.token_source = "HF_TOKEN";
  } else if (const auto legacy = non_empty(env, "HUGGING_FACE_HUB_TOKEN")) {
    s.token = trim(*legacy), s.token_source = "HUGGING_FACE_HUB_TOKEN";
  } else {
    const auto path_var = non_empty(env, "HF_TOKEN_PATH");
    const std::filesystem::path file = path_var ? expand_home(*path_var, env) : hf_home / "token";
    std::ifstream in(file);
    std::string line;
    if (in && std::getline(in, line) && !trim(line).empty()) s.token = trim(line), s.token_source = file.string();
  }
  if (s.token && s.token->empty()) s.token.reset();

  auto offline = non_empty(env, "HF_HUB_OFFLINE");
  if (!offline) offline = non_empty(env, "TRANSFORMERS_OFFLINE");
  s.offline = truthy(offline);
  s.metadata_timeout_s = seconds(env, "HF_HUB_ETAG_TIMEOUT", s.metadata_timeout_s, s.warnings);
  if (non_empty(env, "HF_HUB_DOWNLOAD_TIMEOUT")) {
    const double t = seconds(env, "HF_HUB_DOWNLOAD_TIMEOUT", -1, s.warnings);
    if (t > 0) s.connect_timeout_s = s.stall_timeout_s = t;
  }
  if (const auto v = non_empty(env, "QTRAIN_HUB_DOWNLOAD_ATTEMPTS")) {
    try {
      std::size_t used = 0;
      s.download_attempts = std::stoi(*v, &used);
      if (used != v->size() || s.download_attempts < 1) throw std::invalid_argument("range");
    } catch (const std::exception&) {
      s.download_attempts = 5;
      s.warnings.push_back("QTRAIN_HUB_DOWNLOAD_ATTEMPTS='" + *v + "' is not a positive integer; using the default 5");
    }
  }
  return s;
}

}  // namespace qtrain::hub
