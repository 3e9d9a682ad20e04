// Files and directories that appear under their final name only when complete, and stay there after a
// crash. Every writer in qtrain publishes through here, in the same order: write a temporary sibling
// (same directory, so rename is atomic), fsync it, rename it over the target, fsync the parent directory
// (rename is atomic at once but durable only once its directory is synced). A writer destroyed without
// commit() (an exception, a crash) removes its temporary and leaves the target untouched; a SIGKILL can
// leave a temporary named `<target>.tmp.<pid>.<random>` behind, never a partial target.
#pragma once

#include <cstdio>
#include <filesystem>
#include <string>

namespace qtrain {

// A file written through stdio: write() then commit().
class AtomicFile {
 public:
  explicit AtomicFile(std::filesystem::path target);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, std::size_t bytes);  // throws std::runtime_error naming the file
  void commit();                                    // flush, close, then publish_file

  const std::filesystem::path& temp_path() const { return temp_; }

 private:
  std::filesystem::path target_;
  std::filesystem::path temp_;
  std::FILE* f_ = nullptr;
};

// A file written by a library that takes a file name (HDF5): create and close it at path(), then
// commit(). Nothing is created here; an unpublished path() is removed on destruction.
class AtomicFilePath {
 public:
  explicit AtomicFilePath(std::filesystem::path target);
  ~AtomicFilePath();
  AtomicFilePath(const AtomicFilePath&) = delete;
  AtomicFilePath& operator=(const AtomicFilePath&) = delete;

  const std::filesystem::path& path() const { return temp_; }  // write the file here, and close it
  void commit();                                                // publish_file(path(), target)

 private:
  std::filesystem::path target_;
  std::filesystem::path temp_;
  bool committed_ = false;
};

// Writes a whole file atomically.
void write_file_atomic(const std::filesystem::path& target, const std::string& contents);

// The one publishing step: fsync the (closed) file `temp`, rename it over `target` (same directory),
// fsync the directory. Throws std::runtime_error naming the file; `temp` is left for its owner to remove.
void publish_file(const std::filesystem::path& temp, const std::filesystem::path& target);

// fsync a directory, so the renames and creations inside it survive a crash. Throws
// std::runtime_error naming the directory.
void fsync_directory(const std::filesystem::path& dir);

// create_directories, made durable: the parent of every directory it creates is fsynced, so a power
// loss cannot take away a directory whose contents were fsynced into it.
void create_directories_durably(const std::filesystem::path& dir);

// Deletes a directory tree so that a crash half-way never leaves a partial tree under its name: it is
// renamed to `<dir>.del.<pid>.<rand>` first (durably), then removed.
void remove_directory_durably(const std::filesystem::path& dir);

// What a crash in the middle of these writers leaves in `dir`, cleaned up: `*.tmp.*` (being written)
// and `*.del.*` (being deleted) are removed; a `<name>.old.*` (a replaced directory, kept until its
// successor was in place) whose `<name>` is missing was the only copy and is put back, otherwise it
// is removed. Only for a directory no other process writes into (the caller holds its lock).
void recover_after_crash(const std::filesystem::path& dir);

// A directory written as a whole: its files go into a temporary sibling (`path()`), and commit() fsyncs
// every file and directory in it and renames it into place. An existing target is renamed aside first
// and deleted after (never remove-then-rename: a crash between the two would lose both); a crash at any
// moment leaves one complete directory under the target name or beside it as `<target>.old.*`.
class AtomicDirectory {
 public:
  explicit AtomicDirectory(std::filesystem::path target);  // creates the parent directories and path()
  ~AtomicDirectory();
  AtomicDirectory(const AtomicDirectory&) = delete;
  AtomicDirectory& operator=(const AtomicDirectory&) = delete;

  const std::filesystem::path& path() const { return temp_; }  // write the contents here
  const std::filesystem::path& target() const { return target_; }
  void commit();

 private:
  std::filesystem::path target_;
  std::filesystem::path temp_;
  bool committed_ = false;
};

}  // namespace qtrain
