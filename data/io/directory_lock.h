// One process at a time in a run directory: an exclusive flock(2) on <dir>/.qtrain.lock, held for the
// object's lifetime. The kernel drops it when the process ends however it ends, so a SIGKILLed run
// leaves no stale lock behind; a second qtrain on the same output_dir (a duplicate job, a --dry-run
// beside a live run) is refused instead of cleaning up or overwriting the live run's files.
#pragma once

#include <filesystem>

namespace qtrain {

class DirectoryLock {
 public:
  // Creates `dir` if needed. Throws UsageError naming the directory (and the holder's pid) when another
  // process holds the lock, std::runtime_error when the lock file cannot be made.
  explicit DirectoryLock(const std::filesystem::path& dir);
  ~DirectoryLock();
  DirectoryLock(const DirectoryLock&) = delete;
  DirectoryLock& operator=(const DirectoryLock&) = delete;

 private:
  int fd_ = -1;
};

}  // namespace qtrain
