// The lock huggingface_hub takes around writing one blob: an exclusive flock(2) on
// <cache>/.locks/<repo folder>/<etag>.lock (the `filelock` package uses flock too, so qtrain and Python
// processes exclude each other). Two ranks on one node downloading the same shard: the second waits,
// then finds the blob complete. The kernel drops the lock when its holder dies, however it dies, so a
// killed download never blocks the next one; the lock file itself stays, as huggingface_hub leaves it.
#pragma once

#include <filesystem>
#include <functional>

namespace qtrain::hub {

class BlobLock {
 public:
  // Blocks until the lock is ours; `on_wait` is called once if another process holds it (to say so).
  // Throws Error naming the lock file when it cannot be created or locked.
  BlobLock(const std::filesystem::path& lock_file, const std::function<void()>& on_wait = {});
  ~BlobLock();
  BlobLock(const BlobLock&) = delete;
  BlobLock& operator=(const BlobLock&) = delete;

 private:
  int fd_ = -1;
};

}  // namespace qtrain::hub
