#include "data/hub/hub_snapshot.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <fstream>
#include <set>
#include <sstream>

#include "data/error.h"
#include "data/hub/blob_download.h"
#include "data/hub/hub_api.h"
#include "data/hub/hub_cache.h"
#include "data/io/atomic_file.h"

namespace qtrain::hub {
namespace fs = std::filesystem;
namespace {

constexpr const char* kIndex = "model.safetensors.index.json";

const std::set<std::string>& model_side_files() {
  static const std::set<std::string> s = {"config.json", "generation_config.json", "quantize_config.json", "tokenizer.json",
                                          "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                                          "added_tokens.json", "vocab.json", "merges.txt", "chat_template.jinja",
                                          "chat_template.json", "adapter_config.json"};
  return s;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// "train" as a word of the path: train.jsonl, data/train-00000.jsonl, openassistant_best_replies_train.jsonl;
// not "trainer.json" or "constrained.txt" (the datasets library's split keywords are delimited the same way).
bool names_train_split(const std::string& path) {
  std::string lower = path;
  std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char c) { return std::tolower(c); });
  const auto delim = [](char c) { return !std::isalpha(static_cast<unsigned char>(c)); };
  for (std::size_t i = lower.find("train"); i != std::string::npos; i = lower.find("train", i + 1)) {
    const bool left = i == 0 || delim(lower[i - 1]);
    const bool right = i + 5 == lower.size() || delim(lower[i + 5]);
    if (left && right) return true;
  }
  return false;
}

std::string join_some(const std::vector<std::string>& v, std::size_t max = 8) {
  std::string s;
  for (std::size_t i = 0; i < v.size() && i < max; ++i) s += (i ? ", " : "") + v[i];
  if (v.size() > max) s += ", ... (" + std::to_string(v.size()) + " in all)";
  return s.empty() ? "nothing" : s;
}

std::string read_text(const fs::path& p) {
  std::ifstream in(p);
  if (!in) throw Error(ExitCode::kFailure, "cannot read " + p.string());
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void write_cachedir_tag(const fs::path& root) {
  const fs::path tag = root / "CACHEDIR.TAG";
  if (fs::exists(tag)) return;
  try {  // best effort, as huggingface_hub: a read-only cache must still be usable
    write_file_atomic(tag, "Signature: 8a477f597d28d172789f06886806bc55\n"
                           "# This file is a cache directory tag (the Hugging Face Hub cache, written by qtrain).\n"
                           "# For information about cache directory tags, see:\n#\thttps://bford.info/cachedir/\n");
  } catch (const std::exception&) {
  }
}

// Every file under a snapshot folder, as repository paths.
std::vector<std::string> list_snapshot(const fs::path& dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(dir, ec); !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
    if (it->is_directory()) continue;
    out.push_back(it->path().lexically_relative(dir).generic_string());  // lexical: the entries are symlinks
  }
  std::sort(out.begin(), out.end());
  return out;
}

// The snapshot the cache already has for ref, with every file chosen present. Throws naming what is missing.
// `only`: just these files (fetch_snapshot's). Throws UsageError when the listing lacks one of them.
std::vector<std::string> only_files(const HubRef& ref, const std::vector<std::string>& listing, const std::vector<std::string>& only) {
  for (const auto& f : only)
    if (std::find(listing.begin(), listing.end(), f) == listing.end())
      throw UsageError("Hub: " + to_string(ref.type) + " repository '" + ref.repo_id + "' (revision '" + ref.revision + "') has no " + f +
                       " (it has " + join_some(listing) + ")");
  std::vector<std::string> out = only;
  std::sort(out.begin(), out.end());
  return out;
}

Snapshot cached_snapshot(const HubRef& ref, const HubCache& cache, const std::string& why, const std::vector<std::string>& only) {
  const std::string repo = to_string(ref.type) + " '" + ref.repo_id + "'";
  std::string commit = ref.revision;
  if (!is_commit_hash(commit)) {
    const auto c = cache.read_ref(ref.revision);
    if (!c)
      throw Error(ExitCode::kFailure, "Hub: " + why + ", and the cache has no revision '" + ref.revision + "' of " + repo + " (no " +
                                          (cache.repo_dir() / "refs" / ref.revision).string() +
                                          "): download it once with network, or point HF_HUB_CACHE at a cache that has it");
    commit = *c;
  }
  Snapshot s;
  s.commit = commit;
  s.dir = cache.snapshot_dir(commit);
  if (!fs::is_directory(s.dir))
    throw Error(ExitCode::kFailure, "Hub: " + why + ", and the cache has no snapshot " + s.dir.string() + " of " + repo);
  const auto listing = list_snapshot(s.dir);
  const auto missing = [&](const std::string& f) {
    return Error(ExitCode::kFailure, "Hub: " + why + ", and the cached snapshot of " + repo + " (revision '" + ref.revision +
                                         "', commit " + commit + ") lacks '" + f + "' (" + (s.dir / f).string() +
                                         "): download it once with network");
  };
  std::vector<std::string> files;
  try {
    files = only.empty() ? choose_files(ref, listing) : only_files(ref, listing, only);
  } catch (const UsageError& e) {
    throw Error(ExitCode::kFailure, std::string(e.what()) + " [" + why + ": looked in the cache only, " + s.dir.string() + "]");
  }
  if (std::find(files.begin(), files.end(), kIndex) != files.end() && fs::exists(s.dir / kIndex))
    for (const auto& shard : shards_of_index(read_text(s.dir / kIndex), (s.dir / kIndex).string()))
      if (std::find(files.begin(), files.end(), shard) == files.end()) files.push_back(shard);
  for (const auto& f : files)
    if (!fs::exists(s.dir / f)) throw missing(f);  // exists() follows the link: a dangling one is missing too
  std::sort(files.begin(), files.end());
  s.files = files;
  return s;
}

}  // namespace

std::vector<std::string> shards_of_index(const std::string& index_json, const std::string& where) {
  const auto j = nlohmann::json::parse(index_json, nullptr, false);
  if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
    throw InputError(where + ": not a safetensors index (no \"weight_map\" object)");
  std::set<std::string> shards;
  for (const auto& [name, file] : j["weight_map"].items()) {
    if (!file.is_string()) throw InputError(where + ": weight_map['" + name + "'] is not a file name");
    const std::string f = file.get<std::string>();
    if (!valid_path_in_repo(f))
      throw InputError(where + ": weight_map['" + name + "'] = '" + f + "' is not a file of the repository");
    shards.insert(f);
  }
  return {shards.begin(), shards.end()};
}

std::vector<std::string> choose_files(const HubRef& ref, const std::vector<std::string>& listing) {
  const std::string repo = to_string(ref.type) + " repository '" + ref.repo_id + "' (revision '" + ref.revision + "')";
  const auto has = [&](const std::string& f) { return std::find(listing.begin(), listing.end(), f) != listing.end(); };
  std::vector<std::string> out;
  if (!ref.path_in_repo.empty()) {
    out.push_back(ref.path_in_repo);  // online, a missing file is the Hub's 404, which names it
    return out;
  }
  if (ref.type == RepoType::kModel) {
    for (const auto& f : listing)
      if (model_side_files().count(f)) out.push_back(f);
    if (!has("config.json") && !has("adapter_config.json"))
      throw UsageError("Hub: " + repo + " has no config.json: not a Hugging Face model (it has " + join_some(listing) + ")");
    if (has(kIndex)) out.push_back(kIndex);
    else if (has("model.safetensors")) out.push_back("model.safetensors");
    else if (has("adapter_model.safetensors")) out.push_back("adapter_model.safetensors");
    else
      throw UsageError("Hub: " + repo + " has no safetensors weights (model.safetensors or " + kIndex + "; it has " +
                       join_some(listing) + "): qtrain reads safetensors only; pick a revision that has them (often refs/pr/N)");
  } else {
    std::vector<std::string> data, train;
    for (const auto& f : listing) {
      if (!(ends_with(f, ".jsonl") || ends_with(f, ".json") || ends_with(f, ".txt"))) continue;
      const std::string base = f.substr(f.rfind('/') == std::string::npos ? 0 : f.rfind('/') + 1);
      if (base.rfind('.', 0) == 0 || base == "dataset_infos.json" || base == "dataset_info.json" || base == "state.json") continue;
      data.push_back(f);
      if (names_train_split(f)) train.push_back(f);
    }
    out = train.empty() ? data : train;
    if (out.empty())
      throw UsageError("Hub: " + repo + " has no data file qtrain reads (.jsonl, .json, .txt; it has " + join_some(listing) +
                       "); name one file with hf://datasets/" + ref.repo_id + "/PATH");
  }
  std::sort(out.begin(), out.end());
  return out;
}

Snapshot fetch_snapshot(const HubRef& ref, const HubSettings& settings, std::ostream& log, bool log_is_terminal,
                        const std::vector<std::string>& only) {
  HubCache cache(settings.cache_dir, ref.type, ref.repo_id);
  // "Every data file of a dataset repo" is a question about the repository, not the cache: the cache holds
  // what was downloaded before (perhaps one named file). Only the Hub's listing answers it; without the Hub
  // the cache's files are used, and a note says so.
  const bool whole_dataset = ref.type == RepoType::kDataset && ref.path_in_repo.empty() && only.empty();
  const auto cached_list_note = [&](const Snapshot& s, const std::string& why) {
    if (whole_dataset)
      log << "[hub] note: " << why << ": the data files of " << ref.display() << " are the ones the cache holds (" << s.files.size()
          << " in " << s.dir.string() << "); files of the repository never downloaded are not among them\n";
  };
  if (settings.offline) {
    Snapshot s = cached_snapshot(ref, cache, "HF_HUB_OFFLINE is set", only);
    cached_list_note(s, "HF_HUB_OFFLINE is set");
    return s;
  }
  if (is_commit_hash(ref.revision) && !whole_dataset) {  // a commit never changes: a complete cached copy needs no request
    try {
      return cached_snapshot(ref, cache, "cache lookup", only);
    } catch (const Error&) {
    }
  }
  HttpClient http(std::string("qtrain/") + QTRAIN_VERSION + "; libcurl");
  HubApi api(settings, http);
  RepoInfo info;
  try {
    info = api.repo_info(ref);
  } catch (const NetworkError& e) {
    // huggingface_hub's behaviour: no network, but a complete copy in the cache → use it, and say so.
    try {
      Snapshot s = cached_snapshot(ref, cache, "the Hub is unreachable", only);
      log << "[hub] " << settings.endpoint << " is unreachable (" << e.what() << "); using the cached " << ref.display() << " at commit "
          << s.commit << "\n";
      cached_list_note(s, "the Hub is unreachable");
      return s;
    } catch (const Error&) {
    }
    throw Error(ExitCode::kFailure, "Hub: cannot reach " + settings.endpoint + " to resolve " + ref.display() + ": " + e.what() +
                                        " (and the cache " + cache.repo_dir().string() +
                                        " has no complete copy; with a copy, HF_HUB_OFFLINE=1 uses it without asking the Hub)");
  }
  const std::string commit = info.commit;
  try {
    std::vector<std::string> files = only.empty() ? choose_files(ref, info.files) : only_files(ref, info.files, only);
    std::vector<FileMetadata> todo;
    // A file whose snapshot link already resolves is complete (blobs only ever appear whole): no request.
    const auto plan = [&](const std::string& f) {
      if (fs::exists(cache.snapshot_file(commit, f))) return;
      todo.push_back(api.file_metadata(ref, commit, f));
    };
    const auto fetch_all = [&] {
      int64_t bytes = 0;
      int count = 0;
      for (const auto& m : todo)
        if (!fs::exists(cache.blob(m.etag))) bytes += std::max<int64_t>(0, m.size), ++count;
      DownloadProgress progress(log, log_is_terminal, bytes, count);
      for (const auto& m : todo) fetch_into_cache(api, cache, ref, commit, m, progress);
      todo.clear();
    };
    if (std::find(files.begin(), files.end(), kIndex) != files.end()) {
      plan(kIndex);  // the index names the shards: it comes first
      fetch_all();
      const fs::path index = cache.snapshot_file(commit, kIndex);
      for (const auto& shard : shards_of_index(read_text(index), index.string()))
        if (std::find(files.begin(), files.end(), shard) == files.end()) files.push_back(shard);
    }
    for (const auto& f : files)
      if (f != kIndex) plan(f);
    fetch_all();
    cache.write_ref(ref.revision, commit);
    write_cachedir_tag(cache.root());
    std::sort(files.begin(), files.end());
    return Snapshot{commit, cache.snapshot_dir(commit), files};
  } catch (const NetworkError& e) {
    throw Error(ExitCode::kFailure, "Hub: lost " + settings.endpoint + " while fetching " + ref.display() + " (commit " + commit +
                                        "): " + e.what() + "; run again to continue");
  }
}

}  // namespace qtrain::hub
