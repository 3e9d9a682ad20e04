// A file that appears under its final name only when complete: written to a temporary name in the
// same directory, flushed and fsynced, then renamed over the target. If the writer is destroyed
// without commit() (an exception, a crash), the temporary is removed and the target is untouched.
#pragma once

#include <cstdio>
#include <filesystem>
#include <string>

namespace qtrain {

class AtomicFile {
 public:
  explicit AtomicFile(std::filesystem::path target);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, std::size_t bytes);  // throws std::runtime_error naming the file
  void commit();                                    // flush, fsync, rename into place

  const std::filesystem::path& temp_path() const { return temp_; }

 private:
  std::filesystem::path target_;
  std::filesystem::path temp_;
  std::FILE* f_ = nullptr;
};

// Writes a whole text file atomically.
void write_file_atomic(const std::filesystem::path& target, const std::string& contents);

}  // namespace qtrain
