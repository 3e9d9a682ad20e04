// Hugging Face Hub references as qtrain accepts them where it otherwise wants a local path:
//   model.path / --model   org/name[@revision]                     (or hf://org/name[@revision])
//   data.files entries     hf://datasets/org/name[@revision][/path/in/repo]
//                          org/name[@revision]                     (a dataset repo: its data files)
// Parsing is pure string work: whether a string that parses is *used* as a Hub id also depends on the
// file system (an existing local path always wins); that rule lives in hub_resolve.h.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace qtrain::hub {

enum class RepoType { kModel, kDataset };

// "model" / "dataset" (messages); the cache folder and URL prefixes are in hub_cache.h / hub_client.h.
std::string to_string(RepoType t);

struct HubRef {
  RepoType type = RepoType::kModel;
  std::string repo_id;              // "org/name"
  std::string revision = "main";    // a branch, tag or commit hash
  std::string path_in_repo;         // one file ("dir/train.jsonl"); empty: the files qtrain needs
  bool explicit_scheme = false;     // written as hf://...: never a local path

  // "org/name@rev" or "hf://datasets/org/name@rev/file": how messages name it.
  std::string display() const;
};

// The Hub's repository-name rule (huggingface_hub's validate_repo_id): exactly "namespace/name", each
// part 1..96 characters of [A-Za-z0-9_.-], not starting or ending with '-' or '.', no "--" or "..",
// not ending in ".git". qtrain requires the namespace: a bare "gpt2" is far likelier a local name.
bool is_valid_repo_id(std::string_view repo_id);

// A full 40-hex-digit commit id (the Hub's REGEX_COMMIT_HASH): such a revision needs no network to resolve.
bool is_commit_hash(std::string_view revision);

// A branch or tag name is used as a file name under refs/: refuse what would escape that folder.
bool is_valid_revision(std::string_view revision);

// A relative path inside a repository ("dir/train.jsonl"): no leading or trailing '/', no empty, "." or
// ".." part, no '\\'. Every name from the Hub's listing passes through it before it becomes a path under
// snapshots/<commit>/ (a listing naming "../../x" or "/home/u/x" would otherwise write outside the cache).
bool valid_path_in_repo(std::string_view p);

// "org/name", "org/name@rev", "hf://org/name[@rev]", "hf://models/org/name[@rev]". nullopt when the
// string does not have that shape (it is then a local path). Throws UsageError naming `what` for an
// hf:// string that is malformed (hf:// is an explicit request for the Hub).
std::optional<HubRef> parse_model_ref(std::string_view s, std::string_view what);

// "hf://datasets/org/name[@rev][/path]", "hf://[models/]org/name[@rev][/path]" (a file of a model repo),
// or a bare "org/name[@rev]" (a dataset repo: all its data files). A bare string whose last part has a
// data-file extension (.jsonl, .json, .txt, .parquet, .csv) is a local path, never an id: a missing
// "data/train.jsonl" must say "no such file", not "no such dataset". Throws UsageError for a malformed hf://.
std::optional<HubRef> parse_data_ref(std::string_view s, std::string_view what);

}  // namespace qtrain::hub
