#include "data/hub/blob_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "data/error.h"

namespace qtrain::hub {

BlobLock::BlobLock(const std::filesystem::path& lock_file, const std::function<void()>& on_wait) {
  std::error_code ec;
  std::filesystem::create_directories(lock_file.parent_path(), ec);
  // 0664 like filelock's: ranks of one job may run as different users of one group on a shared cache.
  fd_ = ::open(lock_file.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0664);
  if (fd_ < 0) throw Error(ExitCode::kFailure, "Hub cache: cannot create the lock file " + lock_file.string() + ": " + std::strerror(errno));
  if (::flock(fd_, LOCK_EX | LOCK_NB) == 0) return;
  if (errno == EWOULDBLOCK && on_wait) on_wait();
  while (::flock(fd_, LOCK_EX) != 0) {
    if (errno == EINTR) continue;
    const int err = errno;
    ::close(fd_);
    throw Error(ExitCode::kFailure, "Hub cache: cannot lock " + lock_file.string() + ": " + std::strerror(err));
  }
}

BlobLock::~BlobLock() {
  if (fd_ >= 0) ::close(fd_);  // closing releases the flock
}

}  // namespace qtrain::hub
