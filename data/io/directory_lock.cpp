#include "data/io/directory_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "data/error.h"
#include "data/io/atomic_file.h"

namespace qtrain {
namespace fs = std::filesystem;

DirectoryLock::DirectoryLock(const fs::path& dir) {
  create_directories_durably(dir);
  const fs::path file = dir / ".qtrain.lock";
  fd_ = ::open(file.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd_ < 0) throw std::runtime_error(file.string() + ": cannot create the run directory's lock: " + std::strerror(errno));
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    char holder[32] = {};
    const ssize_t n = ::pread(fd_, holder, sizeof holder - 1, 0);
    ::close(fd_);
    fd_ = -1;
    if (err == EWOULDBLOCK)
      throw UsageError(dir.string() + " is in use by another qtrain process" +
                       (n > 0 ? " (pid " + std::string(holder, static_cast<size_t>(n)) + ")" : std::string()) +
                       ": wait for it to finish, or choose another output_dir");
    throw std::runtime_error(file.string() + ": cannot lock: " + std::strerror(err));
  }
  // The holder's pid, for the message above (informational: the flock is what excludes).
  const std::string pid = std::to_string(::getpid());
  if (::ftruncate(fd_, 0) == 0) {
    const ssize_t ignored = ::pwrite(fd_, pid.data(), pid.size(), 0);
    (void)ignored;
  }
}

DirectoryLock::~DirectoryLock() {
  if (fd_ >= 0) ::close(fd_);  // closing the descriptor releases the flock
}

}  // namespace qtrain
