#include "data/hub/hub_cache.h"

#include <unistd.h>

#include <fstream>
#include <random>
#include <sstream>
#include <system_error>

#include "data/error.h"
#include "data/io/atomic_file.h"

namespace qtrain::hub {
namespace fs = std::filesystem;

namespace {
std::string unique_suffix() {
  return std::to_string(::getpid()) + "." + std::to_string(std::random_device{}());
}
}  // namespace

HubCache::HubCache(fs::path root, RepoType type, std::string repo_id)
    : root_(fs::absolute(root)), type_(type), repo_id_(std::move(repo_id)), repo_dir_(root_ / folder_name(type_, repo_id_)) {}

std::string HubCache::folder_name(RepoType type, const std::string& repo_id) {
  std::string name = type == RepoType::kModel ? "models" : "datasets";
  std::size_t start = 0;
  for (;;) {
    const std::size_t slash = repo_id.find('/', start);
    name += "--" + repo_id.substr(start, slash - start);
    if (slash == std::string::npos) break;
    start = slash + 1;
  }
  return name;
}

std::optional<std::string> HubCache::read_ref(const std::string& revision) const {
  std::ifstream in(repo_dir_ / "refs" / revision);
  if (!in) return std::nullopt;
  std::stringstream ss;
  ss << in.rdbuf();
  std::string commit = ss.str();
  while (!commit.empty() && (commit.back() == '\n' || commit.back() == '\r' || commit.back() == ' ')) commit.pop_back();
  if (!is_commit_hash(commit)) return std::nullopt;
  return commit;
}

void HubCache::write_ref(const std::string& revision, const std::string& commit) const {
  if (revision == commit) return;
  if (read_ref(revision) == commit) return;  // unchanged: a read-only cache stays usable
  const fs::path ref = repo_dir_ / "refs" / revision;
  try {
    fs::create_directories(ref.parent_path());
    write_file_atomic(ref, commit);
  } catch (const std::exception& e) {
    throw Error(ExitCode::kFailure, "Hub cache: cannot write " + ref.string() + ": " + e.what());
  }
}

fs::path HubCache::snapshot_file(const std::string& commit, const std::string& path_in_repo) const {
  const fs::path dir = snapshot_dir(commit).lexically_normal();
  const auto refuse = [&] {
    return Error(ExitCode::kFailure, "Hub cache: refusing the file name '" + path_in_repo + "' of " + to_string(type_) + " '" + repo_id_ +
                                         "' (commit " + commit + "): it is not a path inside the repository and would leave " +
                                         dir.string());
  };
  if (!is_commit_hash(commit) || !valid_path_in_repo(path_in_repo)) throw refuse();
  const fs::path p = (dir / path_in_repo).lexically_normal();
  // Belt and braces: the normalised path must still start with every component of the snapshot folder.
  const fs::path rel = p.lexically_relative(dir);
  if (rel.empty() || *rel.begin() == ".." || rel.is_absolute() || p == dir) throw refuse();
  return p;
}

void HubCache::link_snapshot_file(const std::string& commit, const std::string& path_in_repo, const std::string& etag) const {
  const fs::path link = snapshot_file(commit, path_in_repo);
  // Relative, as huggingface_hub makes them: the cache keeps working when moved or mounted elsewhere.
  // Lexical, like os.path.relpath: canonicalising would bake a symlinked cache root into the link.
  const fs::path target = blob(etag).lexically_relative(link.parent_path());
  std::error_code ec;
  fs::create_directories(link.parent_path(), ec);
  if (ec) throw Error(ExitCode::kFailure, "Hub cache: cannot create " + link.parent_path().string() + ": " + ec.message());
  if (fs::is_symlink(link, ec) && fs::read_symlink(link, ec) == target) return;
  // Make the link under a unique name and rename it over: two ranks linking the same file never see
  // a missing or half-made entry.
  const fs::path tmp = link.parent_path() / (link.filename().string() + ".tmp." + unique_suffix());
  fs::create_symlink(target, tmp, ec);
  if (!ec) fs::rename(tmp, link, ec);
  if (ec) {
    fs::remove(tmp);
    throw Error(ExitCode::kFailure, "Hub cache: cannot link " + link.string() + " -> " + target.string() + ": " + ec.message());
  }
}

}  // namespace qtrain::hub
