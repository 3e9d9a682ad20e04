#include "data/hub/hub_id.h"

#include <algorithm>
#include <array>
#include <vector>

#include "data/error.h"

namespace qtrain::hub {
namespace {

constexpr std::string_view kScheme = "hf://";

bool name_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-' || c == '.';
}

bool valid_part(std::string_view p) {
  if (p.empty() || p.size() > 96) return false;
  if (!std::all_of(p.begin(), p.end(), name_char)) return false;
  // \b...\b in the Hub's regex: a part starts and ends with a word character.
  const auto edge = [](char c) { return c != '-' && c != '.'; };
  return edge(p.front()) && edge(p.back());
}

bool has_data_extension(std::string_view s) {
  const std::size_t slash = s.rfind('/');
  const std::string_view last = slash == std::string_view::npos ? s : s.substr(slash + 1);
  for (std::string_view ext : {".jsonl", ".json", ".txt", ".parquet", ".csv", ".arrow"})
    if (last.size() > ext.size() && last.substr(last.size() - ext.size()) == ext) return true;
  return false;
}

// "org/name[@rev]" then optionally "/path": splits at the second '/', then the revision at '@'
// (a revision with a '/' in it, e.g. refs/pr/1, cannot be written here: huggingface_hub's hf:// URLs
// have the same limit and spell it URL-encoded, which we accept below).
struct Split {
  std::string repo_id, revision, path;
  bool ok = false;
};
Split split_repo(std::string_view s) {
  Split out;
  const std::size_t first = s.find('/');
  if (first == std::string_view::npos) return out;
  const std::size_t second = s.find('/', first + 1);
  std::string_view head = s.substr(0, second);
  if (second != std::string_view::npos) out.path = std::string(s.substr(second + 1));
  const std::size_t at = head.find('@');
  std::string revision = "main";
  if (at != std::string_view::npos) {
    revision = std::string(head.substr(at + 1));
    head = head.substr(0, at);
    // %2F is how hf:// URLs write a '/' inside a revision (refs%2Fpr%2F1).
    for (std::size_t i; (i = revision.find("%2F")) != std::string::npos || (i = revision.find("%2f")) != std::string::npos;)
      revision.replace(i, 3, "/");
  }
  out.repo_id = std::string(head);
  out.revision = revision;
  out.ok = true;
  return out;
}

}  // namespace

bool valid_path_in_repo(std::string_view p) {
  if (p.empty() || p.size() > 4096 || p.front() == '/' || p.back() == '/' || p.find('\\') != std::string_view::npos) return false;
  // Control characters (a NUL would cut the path short in every system call) are no file name of a repo.
  if (std::any_of(p.begin(), p.end(), [](char c) { return static_cast<unsigned char>(c) < 0x20 || c == 0x7f; })) return false;
  std::size_t start = 0;
  while (start <= p.size()) {
    const std::size_t end = std::min(p.find('/', start), p.size());
    const std::string_view part = p.substr(start, end - start);
    if (part.empty() || part == "." || part == "..") return false;
    start = end + 1;
  }
  return true;
}

std::string to_string(RepoType t) {
  switch (t) {
    case RepoType::kModel: return "model";
    case RepoType::kDataset: return "dataset";
  }
  return "?";
}

std::string HubRef::display() const {
  std::string s = repo_id + (revision == "main" ? "" : "@" + revision);
  if (!path_in_repo.empty()) s += "/" + path_in_repo;
  if (explicit_scheme || type == RepoType::kDataset)
    return std::string(kScheme) + (type == RepoType::kDataset ? "datasets/" : "") + s;
  return s;
}

bool is_valid_repo_id(std::string_view id) {
  const std::size_t slash = id.find('/');
  if (slash == std::string_view::npos || id.find('/', slash + 1) != std::string_view::npos) return false;
  if (id.find("--") != std::string_view::npos || id.find("..") != std::string_view::npos) return false;
  if (id.size() >= 4 && id.substr(id.size() - 4) == ".git") return false;
  return valid_part(id.substr(0, slash)) && valid_part(id.substr(slash + 1));
}

bool is_commit_hash(std::string_view r) {
  return r.size() == 40 && std::all_of(r.begin(), r.end(), [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

bool is_valid_revision(std::string_view r) {
  if (r.empty() || r.size() > 255 || r.front() == '/' || r.back() == '/') return false;
  if (r.find("..") != std::string_view::npos || r.find('\\') != std::string_view::npos) return false;
  return std::all_of(r.begin(), r.end(), [](char c) { return static_cast<unsigned char>(c) > ' ' && c != '~' && c != '^' && c != ':'; });
}

std::optional<HubRef> parse_model_ref(std::string_view s, std::string_view what) {
  const bool scheme = s.substr(0, kScheme.size()) == kScheme;
  std::string_view rest = scheme ? s.substr(kScheme.size()) : s;
  if (scheme && rest.substr(0, 7) == "models/") rest = rest.substr(7);
  const auto bad = [&](const std::string& why) -> std::optional<HubRef> {
    if (!scheme) return std::nullopt;
    throw UsageError(std::string(what) + ": '" + std::string(s) + "' is not a Hub model id: " + why +
                     " (expected hf://org/name or hf://org/name@revision)");
  };
  if (scheme && rest.substr(0, 9) == "datasets/") return bad("a dataset repository cannot be a model");
  const Split sp = split_repo(rest);
  if (!sp.ok) return bad("no '/' between organisation and name");
  if (!sp.path.empty()) return bad("a model is a whole repository, not the file '" + sp.path + "'");
  if (!is_valid_repo_id(sp.repo_id)) return bad("'" + sp.repo_id + "' breaks the Hub's naming rule ([A-Za-z0-9_.-], 1-96 characters per part)");
  if (!is_valid_revision(sp.revision)) return bad("bad revision '" + sp.revision + "'");
  HubRef r;
  r.type = RepoType::kModel;
  r.repo_id = sp.repo_id;
  r.revision = sp.revision;
  r.explicit_scheme = scheme;
  return r;
}

std::optional<HubRef> parse_data_ref(std::string_view s, std::string_view what) {
  const bool scheme = s.substr(0, kScheme.size()) == kScheme;
  std::string_view rest = scheme ? s.substr(kScheme.size()) : s;
  RepoType type = RepoType::kDataset;
  if (scheme) {
    if (rest.substr(0, 9) == "datasets/") rest = rest.substr(9);
    else if (rest.substr(0, 7) == "models/") type = RepoType::kModel, rest = rest.substr(7);
    else type = RepoType::kModel;  // huggingface_hub's HfFileSystem: hf://org/name is a model repo
  } else if (has_data_extension(s)) {
    return std::nullopt;
  }
  const auto bad = [&](const std::string& why) -> std::optional<HubRef> {
    if (!scheme) return std::nullopt;
    throw UsageError(std::string(what) + ": '" + std::string(s) + "' is not a Hub file: " + why +
                     " (expected hf://datasets/org/name[@revision][/path/in/repo])");
  };
  const Split sp = split_repo(rest);
  if (!sp.ok) return bad("no '/' between organisation and name");
  if (!scheme && !sp.path.empty()) return std::nullopt;  // a/b/c without hf:// is a local path
  if (!is_valid_repo_id(sp.repo_id)) return bad("'" + sp.repo_id + "' breaks the Hub's naming rule ([A-Za-z0-9_.-], 1-96 characters per part)");
  if (!is_valid_revision(sp.revision)) return bad("bad revision '" + sp.revision + "'");
  if (!sp.path.empty() && !valid_path_in_repo(sp.path)) return bad("bad path in the repository '" + sp.path + "'");
  HubRef r;
  r.type = type;
  r.repo_id = sp.repo_id;
  r.revision = sp.revision;
  r.path_in_repo = sp.path;
  r.explicit_scheme = scheme;
  return r;
}

}  // namespace qtrain::hub
