#include "data/hub/hub_cache.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>

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
// 8 hex digits of the host name (FNV-1a): partial names say which host's process writes them.
std::string host_tag() {
  char name[HOST_NAME_MAX + 1] = {0};
  ::gethostname(name, sizeof name - 1);
  uint32_t h = 2166136261u;
  for (const char* p = name; *p; ++p) h = (h ^ static_cast<unsigned char>(*p)) * 16777619u;
  char buf[9];
  std::snprintf(buf, sizeof buf, "%08x", h);
  return buf;
}

constexpr auto kAbandonedAfter = std::chrono::minutes(10);

}  // namespace

fs::path HubCache::own_partial(const std::string& etag) const {
  return repo_dir_ / "blobs" / (etag + ".qtrain-" + host_tag() + "-" + std::to_string(::getpid()) + ".incomplete");
}

int64_t HubCache::take_over_partial(const std::string& etag) const {
  const fs::path mine = own_partial(etag);
  std::error_code ec;
  if (fs::exists(mine, ec)) return static_cast<int64_t>(fs::file_size(mine, ec));  // a dead process with our pid left it
  const std::string suffix = ".incomplete", ours = ".qtrain-" + host_tag() + "-";
  struct Candidate {
    fs::path path;
    uintmax_t size;
  };
  std::vector<Candidate> abandoned;
  for (auto it = fs::directory_iterator(repo_dir_ / "blobs", ec); !ec && it != fs::directory_iterator(); it.increment(ec)) {
    const std::string name = it->path().filename().string();
    // <etag>.incomplete, <etag>.qtrain-<host>-<pid>.incomplete, <etag>.<uuid8>.incomplete
    if (name.size() < etag.size() + suffix.size() || name.compare(0, etag.size(), etag) != 0 || name[etag.size()] != '.' ||
        name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0)
      continue;
    const std::string middle = name.substr(etag.size(), name.size() - etag.size() - suffix.size());  // "", ".qtrain-h-pid", ".uuid8"
    bool dead = middle.empty();  // the shared <etag>.incomplete: writers of it take the lock we hold
    if (!dead && middle.rfind(ours, 0) == 0) {
      try {
        const long pid = std::stol(middle.substr(ours.size()));
        dead = ::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH;
      } catch (const std::exception&) {
      }
    }
    std::error_code e2;
    if (!dead) {
      const auto mtime = fs::last_write_time(it->path(), e2);
      dead = !e2 && fs::file_time_type::clock::now() - mtime > kAbandonedAfter;
    }
    if (dead) abandoned.push_back({it->path(), fs::file_size(it->path(), e2)});
  }
  std::sort(abandoned.begin(), abandoned.end(), [](const Candidate& a, const Candidate& b) { return a.size > b.size; });
  int64_t taken = 0;
  for (const auto& c : abandoned) {
    std::error_code e2;
    if (taken == 0 && !fs::exists(mine, e2)) {
      fs::rename(c.path, mine, e2);  // atomic: a second process renaming the same file gets ENOENT
      if (!e2) {
        taken = static_cast<int64_t>(fs::file_size(mine, e2));
        continue;
      }
    }
    fs::remove(c.path, e2);  // shorter than the one taken over, or already gone
  }
  return taken;
}

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
