#include "data/hub/hub_api.h"

#include <nlohmann/json.hpp>

#include <algorithm>

#include "data/error.h"
#include "data/hub/url.h"

namespace qtrain::hub {
namespace {

std::string repo_url_prefix(RepoType t) { return t == RepoType::kDataset ? "datasets/" : ""; }

// ETag: W/"abc" or "abc" → abc (huggingface_hub's _normalize_etag).
std::string normalize_etag(std::string e) {
  if (e.rfind("W/", 0) == 0) e = e.substr(2);
  e.erase(std::remove(e.begin(), e.end(), '"'), e.end());
  return e;
}

// The server's own words: X-Error-Message, else the JSON body's "error", else the body's first line.
std::string server_message(const HttpResponse& res) {
  if (const std::string m = res.header("x-error-message"); !m.empty()) return m;
  const auto j = nlohmann::json::parse(res.body, nullptr, false);
  if (j.is_object() && j.contains("error") && j["error"].is_string()) return j["error"].get<std::string>();
  // S3 / CDN errors: <Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>.
  const auto tag = [&](const std::string& name) {
    const std::size_t a = res.body.find("<" + name + ">"), b = res.body.find("</" + name + ">");
    return a != std::string::npos && b != std::string::npos && b > a ? res.body.substr(a + name.size() + 2, b - a - name.size() - 2)
                                                                      : std::string();
  };
  if (const std::string m = tag("Message"); !m.empty()) return (tag("Code").empty() ? "" : tag("Code") + ": ") + m.substr(0, 200);
  std::string first = res.body.substr(0, res.body.find('\n'));
  if (first.size() > 200) first = first.substr(0, 200) + "...";
  return first;
}

// A blob is named after its etag: refuse one that could leave blobs/.
bool safe_etag(const std::string& e) {
  return !e.empty() && e.size() <= 128 &&
         std::all_of(e.begin(), e.end(), [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_'; });
}

}  // namespace

std::string url_quote(const std::string& s, bool keep_slash) {
  static const char* hex = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~' || (keep_slash && c == '/')) out += static_cast<char>(c);
    else out += '%', out += hex[c >> 4], out += hex[c & 15];
  }
  return out;
}

bool FileMetadata::is_sha256() const {
  return etag.size() == 64 && std::all_of(etag.begin(), etag.end(), [](char c) { return std::isxdigit(static_cast<unsigned char>(c)); });
}

std::string HubApi::resolve_url(const HubRef& ref, const std::string& revision, const std::string& path_in_repo) const {
  return s_.endpoint + "/" + repo_url_prefix(ref.type) + ref.repo_id + "/resolve/" + url_quote(revision, false) + "/" +
         url_quote(path_in_repo, true);
}

bool HubApi::on_endpoint(const std::string& url) const { return same_origin(url, s_.endpoint); }

std::vector<std::string> HubApi::auth_headers(const std::string& url) const {
  if (!s_.token || !on_endpoint(url)) return {};
  return {"Authorization: Bearer " + *s_.token};
}

void HubApi::throw_for_status(const HttpResponse& res, const HubRef& ref, const std::string& revision,
                              const std::string& path_in_repo, const std::string& url) const {
  if (!on_endpoint(url)) {
    // Storage the Hub redirected to (a CDN or S3 with a signed URL): its 403 means an expired or refused
    // signature, not a gated repository, and our token never went there. The query (the signature) is
    // left out of the message.
    const std::string bare = url.substr(0, url.find('?'));
    const std::string msg = server_message(res);
    const bool refused = res.status == 401 || res.status == 403 || res.status == 410;
    throw Error(ExitCode::kFailure, "Hub: the storage server " + std::string(refused ? "refused" : "failed") + " the download of " +
                                        to_string(ref.type) + " '" + ref.repo_id + "' file '" + path_in_repo + "' at revision '" +
                                        revision + "' (HTTP " + std::to_string(res.status) + " from " + bare +
                                        (msg.empty() ? "" : ": " + msg) + ")" +
                                        (refused ? " even with a fresh download URL from the Hub" : "") + "; run again later");
  }
  const std::string code = res.header("x-error-code");
  const std::string what = to_string(ref.type) + " repository '" + ref.repo_id + "'";
  const std::string msg = server_message(res);
  const std::string tail = " (HTTP " + std::to_string(res.status) + " from " + url + (msg.empty() ? "" : ": " + msg) + ")";
  const std::string page = s_.endpoint + "/" + repo_url_prefix(ref.type) + ref.repo_id;
  const std::string login = s_.token ? "the token from " + s_.token_source + " was refused or has no access to it: check it, and "
                                     : "no token is set: run `huggingface-cli login` (or `hf auth login`), or set HF_TOKEN, and ";
  if (code == "RepositoryNotFound" || (res.status == 404 && path_in_repo.empty() && code.empty()))
    throw UsageError("Hub: " + what + " not found" +
                     (res.status == 401 ? "; if it is private or gated, " + login + "make sure you have access" : "") + tail);
  if (code == "RevisionNotFound")
    throw UsageError("Hub: " + what + " has no revision '" + revision + "' (a branch, tag or commit)" + tail);
  if (code == "EntryNotFound" || res.status == 404)
    throw UsageError("Hub: " + what + " at revision '" + revision + "' has no file '" + path_in_repo + "'" + tail);
  if (res.status == 401 || res.status == 403 || code == "GatedRepo")
    throw UsageError("Hub: " + what + " is gated or private; " + login + "request access at " + page + tail);
  throw Error(ExitCode::kFailure, "Hub: request for " + what + (path_in_repo.empty() ? "" : " file '" + path_in_repo + "'") +
                                      " at revision '" + revision + "' failed" + tail);
}

RepoInfo HubApi::repo_info(const HubRef& ref) {
  const std::string url = s_.endpoint + "/api/" + (ref.type == RepoType::kDataset ? "datasets/" : "models/") + ref.repo_id +
                          "/revision/" + url_quote(ref.revision, false);
  HttpRequest req;
  req.url = url;
  req.headers = auth_headers(url);
  req.timeout_s = s_.metadata_timeout_s;
  req.connect_timeout_s = s_.connect_timeout_s;
  req.stall_timeout_s = s_.stall_timeout_s;
  const HttpResponse res = http_.fetch(req);
  if (res.status != 200) throw_for_status(res, ref, ref.revision, "", url);
  const auto j = nlohmann::json::parse(res.body, nullptr, false);
  if (!j.is_object() || !j.contains("sha") || !j["sha"].is_string() || !is_commit_hash(j["sha"].get<std::string>()))
    throw Error(ExitCode::kFailure, "Hub: " + url + " answered without a commit hash in \"sha\" (is HF_ENDPOINT='" + s_.endpoint +
                                        "' a Hugging Face Hub?)");
  RepoInfo info;
  info.commit = j["sha"].get<std::string>();
  if (j.contains("siblings") && j["siblings"].is_array())
    for (const auto& s : j["siblings"]) {
      if (!s.is_object() || !s.contains("rfilename") || !s["rfilename"].is_string()) continue;
      std::string name = s["rfilename"].get<std::string>();
      // Each name becomes a path under snapshots/<commit>/: one that is not a plain relative path inside the
      // repository ("../../x.json", "/home/u/cfg.json") refuses the whole listing (the server is not trusted).
      if (!valid_path_in_repo(name))
        throw Error(ExitCode::kFailure, "Hub: the file listing of " + to_string(ref.type) + " repository '" + ref.repo_id +
                                            "' at revision '" + ref.revision + "' (" + url + ") names the file '" + name +
                                            "', which is not a path inside the repository; refusing the listing");
      info.files.push_back(std::move(name));
    }
  return info;
}

FileMetadata HubApi::file_metadata(const HubRef& ref, const std::string& commit, const std::string& path_in_repo) {
  std::string url = resolve_url(ref, commit, path_in_repo);
  HttpResponse res;
  // Redirects that stay on the Hub (a renamed repo) are followed, with the token. One to another host
  // points at the storage holding an LFS file: its response carries the metadata, its Location is the
  // download URL (huggingface_hub draws the same line).
  for (int hops = 0;; ++hops) {
    HttpRequest req;
    req.url = url;
    req.head = true;
    req.follow_redirects = false;
    req.headers = auth_headers(url);
    req.timeout_s = s_.metadata_timeout_s;
    req.connect_timeout_s = s_.connect_timeout_s;
    req.stall_timeout_s = s_.stall_timeout_s;
    res = http_.fetch(req);
    const std::string location = res.header("location");
    if (res.status >= 300 && res.status < 400 && !location.empty()) {
      const std::string next = resolve_location(url, location);
      if (on_endpoint(next) && hops < 5) {
        url = next;
        continue;
      }
    }
    break;
  }
  if (res.status >= 400 || res.status < 200) throw_for_status(res, ref, commit, path_in_repo, url);
  FileMetadata m;
  m.path_in_repo = path_in_repo;
  m.etag = normalize_etag(!res.header("x-linked-etag").empty() ? res.header("x-linked-etag") : res.header("etag"));
  const bool redirect = res.status >= 300;
  const std::string size = !res.header("x-linked-size").empty() ? res.header("x-linked-size") : redirect ? "" : res.header("content-length");
  if (!size.empty()) {
    try {
      m.size = std::stoll(size);
    } catch (const std::exception&) {
      m.size = -1;
    }
  }
  m.download_url = redirect && !res.header("location").empty() ? resolve_location(url, res.header("location")) : url;
  if (!safe_etag(m.etag))
    throw Error(ExitCode::kFailure, "Hub: " + url + " gave no usable ETag ('" + m.etag + "') for " + to_string(ref.type) + " '" +
                                        ref.repo_id + "' file '" + path_in_repo + "': the cache names blobs after it");
  if (const std::string c = res.header("x-repo-commit"); !c.empty() && c != commit)
    throw Error(ExitCode::kFailure, "Hub: " + url + " answered for commit " + c + ", not the requested " + commit);
  return m;
}

}  // namespace qtrain::hub
