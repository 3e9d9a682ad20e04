#include "data/io/atomic_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <random>
#include <regex>
#include <vector>
#include <stdexcept>

namespace qtrain {
namespace fs = std::filesystem;

namespace {

// A unique sibling name: same directory (so rename is atomic), pid + random so writers never collide.
fs::path sibling(const fs::path& target, const char* tag) {
  fs::path p = target;
  p += std::string(tag) + std::to_string(::getpid()) + "." + std::to_string(std::random_device{}());
  return p;
}

fs::path parent_of(const fs::path& p) { return p.has_parent_path() ? p.parent_path() : fs::path("."); }

// fsync through a fresh descriptor: on Linux fsync flushes the inode's dirty pages whichever descriptor
// wrote them, so files written and closed by another library (HDF5) are covered too.
void fsync_path(const fs::path& p, int flags, const char* what) {
  const int fd = ::open(p.c_str(), flags | O_CLOEXEC);
  if (fd < 0) throw std::runtime_error(p.string() + ": cannot open " + what + " to fsync: " + std::strerror(errno));
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  if (rc != 0) throw std::runtime_error(p.string() + ": fsync of the " + what + " failed: " + std::strerror(err));
}

// Every regular file under `dir`, then every directory, then `dir` itself: the contents are on disk
// before the rename that publishes them.
void fsync_tree(const fs::path& dir) {
  for (const auto& e : fs::recursive_directory_iterator(dir))
    if (e.is_regular_file()) fsync_path(e.path(), O_RDONLY, "file");
  for (const auto& e : fs::recursive_directory_iterator(dir))
    if (e.is_directory()) fsync_directory(e.path());
  fsync_directory(dir);
}

}  // namespace

void fsync_directory(const fs::path& dir) { fsync_path(dir, O_RDONLY | O_DIRECTORY, "directory"); }

void publish_file(const fs::path& temp, const fs::path& target) {
  fsync_path(temp, O_RDONLY, "file");
  std::error_code ec;
  fs::rename(temp, target, ec);
  if (ec)
    throw std::runtime_error(target.string() + ": cannot rename the temporary file " + temp.string() + " into place: " +
                             ec.message());
  fsync_directory(parent_of(target));
}

// ---- AtomicFile ----

AtomicFile::AtomicFile(fs::path target) : target_(std::move(target)) {
  temp_ = sibling(target_, ".tmp.");
  f_ = std::fopen(temp_.c_str(), "wbe");
  if (!f_) throw std::runtime_error(temp_.string() + ": cannot create: " + std::strerror(errno));
}

AtomicFile::~AtomicFile() {
  if (f_) std::fclose(f_);
  std::error_code ec;
  fs::remove(temp_, ec);  // a no-op after a successful commit
}

void AtomicFile::write(const void* data, std::size_t bytes) {
  if (!f_) throw std::logic_error(target_.string() + ": write after commit");
  if (bytes && std::fwrite(data, 1, bytes, f_) != bytes)
    throw std::runtime_error(temp_.string() + ": write failed: " + std::strerror(errno));
}

void AtomicFile::commit() {
  if (!f_) throw std::logic_error(target_.string() + ": committed twice");
  // fclose reports a write error the buffered fwrite calls deferred (a full disk, for example).
  const int rc = std::fclose(f_);
  f_ = nullptr;
  if (rc != 0) throw std::runtime_error(temp_.string() + ": write failed: " + std::strerror(errno));
  publish_file(temp_, target_);
}

void write_file_atomic(const fs::path& target, const std::string& contents) {
  AtomicFile f(target);
  f.write(contents.data(), contents.size());
  f.commit();
}

// ---- AtomicFilePath ----

AtomicFilePath::AtomicFilePath(fs::path target) : target_(std::move(target)), temp_(sibling(target_, ".tmp.")) {}

AtomicFilePath::~AtomicFilePath() {
  if (committed_) return;
  std::error_code ec;
  fs::remove(temp_, ec);
}

void AtomicFilePath::commit() {
  if (committed_) throw std::logic_error(target_.string() + ": committed twice");
  publish_file(temp_, target_);
  committed_ = true;
}

void create_directories_durably(const fs::path& dir) {
  std::vector<fs::path> missing;  // the directories to create, innermost first
  for (fs::path p = dir; !p.empty() && !fs::exists(p); p = p.has_parent_path() && p.parent_path() != p ? p.parent_path() : fs::path())
    missing.push_back(p);
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw std::runtime_error(dir.string() + ": cannot create directory: " + ec.message());
  for (auto it = missing.rbegin(); it != missing.rend(); ++it) fsync_directory(parent_of(*it));
}

void remove_directory_durably(const fs::path& dir) {
  const fs::path trash = sibling(dir, ".del.");
  fs::rename(dir, trash);
  fsync_directory(parent_of(dir));
  fs::remove_all(trash);
}

void recover_after_crash(const fs::path& dir) {
  static const std::regex re("(.+)\\.(tmp|old|del)\\.[0-9]+\\.[0-9]+");
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return;
  std::vector<fs::path> entries;
  for (const auto& e : fs::directory_iterator(dir)) entries.push_back(e.path());
  bool changed = false;
  for (const auto& p : entries) {
    std::smatch m;
    const std::string name = p.filename().string();
    if (!std::regex_match(name, m, re)) continue;
    const fs::path target = dir / m[1].str();
    if (m[2] == "old" && !fs::exists(fs::symlink_status(target))) fs::rename(p, target);
    else fs::remove_all(p);
    changed = true;
  }
  if (changed) fsync_directory(dir);
}

// ---- AtomicDirectory ----

AtomicDirectory::AtomicDirectory(fs::path target) : target_(std::move(target)) {
  if (!target_.has_filename()) target_ = target_.parent_path();  // "out/" names "out"
  create_directories_durably(parent_of(target_));
  std::error_code ec;
  temp_ = sibling(target_, ".tmp.");
  if (!fs::create_directory(temp_, ec) || ec)
    throw std::runtime_error(temp_.string() + ": cannot create temporary directory: " +
                             (ec ? ec.message() : std::string("it already exists")));
}

AtomicDirectory::~AtomicDirectory() {
  if (committed_) return;
  std::error_code ec;
  fs::remove_all(temp_, ec);
}

void AtomicDirectory::commit() {
  if (committed_) throw std::logic_error(target_.string() + ": committed twice");
  fsync_tree(temp_);
  // An existing target goes aside first; it is deleted only once the new one is in place and the
  // rename is durable, so a crash at any moment leaves one complete directory.
  std::error_code ec;
  fs::path old;
  if (fs::exists(fs::symlink_status(target_))) {
    old = sibling(target_, ".old.");
    fs::rename(target_, old, ec);
    if (ec) throw std::runtime_error(target_.string() + ": cannot move the existing one aside to " + old.string() + ": " + ec.message());
  }
  fs::rename(temp_, target_, ec);
  if (ec) {
    std::error_code ignored;
    if (!old.empty()) fs::rename(old, target_, ignored);  // put the previous one back
    throw std::runtime_error(target_.string() + ": cannot rename the temporary directory " + temp_.string() +
                             " into place: " + ec.message());
  }
  committed_ = true;
  fsync_directory(parent_of(target_));
  if (!old.empty()) fs::remove_all(old, ec);  // best effort: the new directory is in place and durable
}

}  // namespace qtrain
