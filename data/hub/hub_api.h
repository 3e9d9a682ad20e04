// The Hub's HTTP endpoints qtrain uses, and what their errors mean for the user:
//   GET  {endpoint}/api/{models|datasets}/{repo}/revision/{revision}   → {"sha": commit, "siblings": [{"rfilename"}]}
//   HEAD {endpoint}/[datasets/]{repo}/resolve/{commit}/{file}          → ETag / X-Linked-Etag, X-Linked-Size,
//        X-Repo-Commit; LFS files answer 302 with the storage URL in Location (not followed: it is where
//        the bytes come from, without our token)
// Error statuses become qtrain errors that name the repo, revision, file and URL (see throw_for_status).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "data/hub/hub_id.h"
#include "data/hub/hub_settings.h"
#include "data/hub/http_client.h"

namespace qtrain::hub {

struct RepoInfo {
  std::string commit;
  std::vector<std::string> files;  // every file of the repository at that commit
};

struct FileMetadata {
  std::string path_in_repo;
  std::string etag;          // normalised: no W/ and no quotes; sha256 for LFS files, git blob sha1 otherwise
  int64_t size = -1;         // -1: the server did not say
  std::string download_url;  // the resolve URL, or where its redirect points
  bool is_sha256() const;    // the etag is a 64-hex sha256: the content can be verified
};

class HubApi {
 public:
  HubApi(const HubSettings& settings, HttpClient& http) : s_(settings), http_(http) {}

  RepoInfo repo_info(const HubRef& ref);
  FileMetadata file_metadata(const HubRef& ref, const std::string& commit, const std::string& path_in_repo);

  std::string resolve_url(const HubRef& ref, const std::string& revision, const std::string& path_in_repo) const;
  // `url` has the endpoint's scheme, host and port (url.h's same_origin): the token goes there only.
  bool on_endpoint(const std::string& url) const;
  // The Authorization header when a token is set and `url` is on the endpoint (never sent elsewhere).
  std::vector<std::string> auth_headers(const std::string& url) const;

  // Throws the qtrain error for a failed request: 401/403 → UsageError with how to log in (gated or
  // private repo), 404 → UsageError naming what is missing (repo, revision or file), other statuses →
  // Error (exit 1) with the status and the server's message.
  [[noreturn]] void throw_for_status(const HttpResponse& res, const HubRef& ref, const std::string& revision,
                                     const std::string& path_in_repo, const std::string& url) const;

  const HubSettings& settings() const { return s_; }
  HttpClient& http() { return http_; }

 private:
  const HubSettings& s_;
  HttpClient& http_;
};

// The URL form of a path: each byte outside [A-Za-z0-9-._~] percent-encoded, '/' kept when keep_slash.
std::string url_quote(const std::string& s, bool keep_slash);

}  // namespace qtrain::hub
