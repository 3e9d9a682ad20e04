// Where the Hub is and how to talk to it, read once from the environment with huggingface_hub's names
// and precedence, so qtrain shares its cache, token and offline switch with transformers, vLLM and
// huggingface-cli:
//   cache     HF_HUB_CACHE, else HUGGINGFACE_HUB_CACHE, else $HF_HOME/hub, else $XDG_CACHE_HOME/huggingface/hub,
//             else ~/.cache/huggingface/hub
//   endpoint  HF_ENDPOINT (default https://huggingface.co), trailing '/' removed
//   token     HF_TOKEN (or the legacy HUGGING_FACE_HUB_TOKEN), else the file HF_TOKEN_PATH, else $HF_HOME/token
//             (what `huggingface-cli login` / `hf auth login` writes)
//   offline   HF_HUB_OFFLINE, or when it is unset or empty TRANSFORMERS_OFFLINE (huggingface_hub's
//             `HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE`), in 1/ON/YES/TRUE: the cache only, no request at all
//   timeouts  HF_HUB_ETAG_TIMEOUT (metadata requests, default 10 s), HF_HUB_DOWNLOAD_TIMEOUT (connecting and
//             the longest stall while downloading; default 10 s to connect and 30 s of stall: a stalled
//             10 GB shard is cheaper to wait for a little than to restart)
//   retries   QTRAIN_HUB_DOWNLOAD_ATTEMPTS (default 5): a dropped download resumes where it stopped
#pragma once

#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace qtrain::hub {

struct HubSettings {
  std::filesystem::path cache_dir;
  std::string endpoint = "https://huggingface.co";
  std::optional<std::string> token;
  std::string token_source;            // "HF_TOKEN" or the token file's path: said in 401/403 messages
  bool offline = false;
  double metadata_timeout_s = 10;      // whole request: the revision API, HEAD of each file
  double connect_timeout_s = 10;
  double stall_timeout_s = 30;         // abort a download that moved no byte for this long
  int download_attempts = 5;           // a dropped connection resumes (Range) this many times in all
  double retry_backoff_s = 1;          // first wait between attempts, doubled each time
  std::vector<std::string> warnings;   // unusable values that were replaced by their defaults
};

// The environment as a function, so tests need not touch the process's own.
using EnvLookup = std::function<std::optional<std::string>(const std::string& name)>;
EnvLookup process_env();

// Never throws: a malformed timeout or attempt count falls back to its default with a line in `warnings`
// (read only when a Hub id is used, so a bad HF_HUB_ETAG_TIMEOUT never stops a recipe of local paths).
HubSettings hub_settings_from_env(const EnvLookup& env = process_env());

}  // namespace qtrain::hub
