// The Hugging Face cache layout, exactly as huggingface_hub writes and reads it, so a file downloaded
// by qtrain is found by transformers and the reverse:
//   <cache>/models--org--name/                 (datasets--org--name for a dataset repo)
//     blobs/<etag>                             the content; etag = sha256 (LFS files) or git blob sha1
//     blobs/<etag>.incomplete                  a download in progress (qtrain resumes it with a Range request)
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
