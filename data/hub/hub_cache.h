// The Hugging Face cache layout huggingface_hub writes and reads (blobs, snapshots, refs, locks are the
// same, so a file downloaded by qtrain is found by transformers and the reverse); only the names of
// partial downloads are qtrain's own:
//   <cache>/models--org--name/                 (datasets--org--name for a dataset repo)
//     blobs/<etag>                             the content; etag = sha256 (LFS files) or git blob sha1
//     blobs/<etag>.qtrain-<host>-<pid>.incomplete   this process's partial download. Per process, like
//                                              huggingface_hub 2.4's <etag>.<uuid8>.incomplete: where flock
//                                              silently "succeeds" (some network file systems) two writers
//                                              never share a file. Unlike huggingface_hub, which deletes its
//                                              partial on failure, qtrain keeps it and the next run takes it
//                                              over by rename (one process wins): a partial of a dead process
//                                              of this host, the shared blobs/<etag>.incomplete of older
//                                              versions, or any other partial unchanged for 10 minutes.
//     snapshots/<commit>/<path/in/repo>        relative symlink ../../blobs/<etag> (deeper for nested paths)
//     refs/<revision>                          the commit a branch or tag pointed to, no newline
//   <cache>/.locks/models--org--name/<etag>.lock   flock(2) held while a blob is written (filelock's)
#pragma once

#include <filesystem>
#include <optional>
#include <string>

#include "data/hub/hub_id.h"

namespace qtrain::hub {

class HubCache {
 public:
  HubCache(std::filesystem::path root, RepoType type, std::string repo_id);

  // "models--org--name" (huggingface_hub's repo_folder_name).
  static std::string folder_name(RepoType type, const std::string& repo_id);

  const std::filesystem::path& root() const { return root_; }
  const std::filesystem::path& repo_dir() const { return repo_dir_; }
  std::filesystem::path blob(const std::string& etag) const { return repo_dir_ / "blobs" / etag; }
  std::filesystem::path incomplete(const std::string& etag) const { return repo_dir_ / "blobs" / (etag + ".incomplete"); }
  // This process's partial download of a blob (see above).
  std::filesystem::path own_partial(const std::string& etag) const;
  // Under the blob's lock: makes own_partial(etag) hold the longest abandoned partial of that blob (renamed,
  // so only one process gets it) and deletes the other abandoned ones; a partial that another live process
  // may still write is left alone. Returns the size taken over (0: none).
  int64_t take_over_partial(const std::string& etag) const;
  std::filesystem::path snapshot_dir(const std::string& commit) const { return repo_dir_ / "snapshots" / commit; }
  // snapshots/<commit>/<path>. Throws Error when `path_in_repo` is no relative path inside the repository
  // (valid_path_in_repo) or would not stay under the snapshot folder: names come from the server.
  std::filesystem::path snapshot_file(const std::string& commit, const std::string& path_in_repo) const;
  std::filesystem::path lock_file(const std::string& etag) const { return root_ / ".locks" / folder_name(type_, repo_id_) / (etag + ".lock"); }

  // The commit refs/<revision> names; nullopt when the ref is missing or not a commit hash.
  std::optional<std::string> read_ref(const std::string& revision) const;
  // Writes refs/<revision> atomically (a reader never sees half a hash) when it differs; a commit-hash
  // revision needs no ref (huggingface_hub writes none either).
  void write_ref(const std::string& revision, const std::string& commit) const;

  // snapshots/<commit>/<path> → the blob, as a relative symlink. An existing link to the same blob is
  // kept (another process made it); any other file there is replaced atomically (symlink + rename).
  void link_snapshot_file(const std::string& commit, const std::string& path_in_repo, const std::string& etag) const;

 private:
  std::filesystem::path root_;
  RepoType type_;
  std::string repo_id_;
  std::filesystem::path repo_dir_;
};

}  // namespace qtrain::hub
