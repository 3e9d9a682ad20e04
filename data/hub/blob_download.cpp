#include "data/hub/blob_download.h"

#include <chrono>
#include <cstdio>
#include <cstring>
#include <thread>

#include "data/error.h"
#include "data/hub/blob_lock.h"
#include "data/hub/sha256.h"
#include "data/io/atomic_file.h"

namespace qtrain::hub {
namespace fs = std::filesystem;
namespace {

int64_t file_size_or_zero(const fs::path& p) {
  std::error_code ec;
  const auto n = fs::file_size(p, ec);
  return ec ? 0 : static_cast<int64_t>(n);
}

// RAII for the .incomplete file's FILE*.
struct OpenFile {
  std::FILE* f = nullptr;
  ~OpenFile() {
    if (f) std::fclose(f);
  }
};

std::string describe(const HubRef& ref, const std::string& commit, const std::string& path) {
  return to_string(ref.type) + " '" + ref.repo_id + "' (revision '" + ref.revision + "', commit " + commit.substr(0, 12) + ") file '" + path + "'";
}

// Checks a complete .incomplete file against the metadata; a mismatch deletes it (a resume cannot
// repair wrong bytes) and throws.
void verify(const fs::path& part, const FileMetadata& meta, const std::string& what, const std::string& url) {
  const int64_t got = file_size_or_zero(part);
  if (meta.size >= 0 && got != meta.size) {
    fs::remove(part);
    throw Error(ExitCode::kFailure, "Hub: " + what + ": downloaded " + std::to_string(got) + " bytes, the Hub says " +
                                        std::to_string(meta.size) + " [" + url + "]; the partial file was deleted, run again");
  }
  if (meta.is_sha256()) {
    const std::string sha = sha256_file(part);
    if (sha != meta.etag) {
      fs::remove(part);
      throw Error(ExitCode::kFailure, "Hub: " + what + ": sha256 " + sha + " does not match the Hub's " + meta.etag + " [" + url +
                                          "]; the corrupt download was deleted, run again");
    }
  }
}

}  // namespace

void fetch_into_cache(HubApi& api, const HubCache& cache, const HubRef& ref, const std::string& commit, const FileMetadata& planned,
                      DownloadProgress& progress) {
  const HubSettings& s = api.settings();
  const fs::path blob = cache.blob(planned.etag);
  const std::string what = describe(ref, commit, planned.path_in_repo);
  // An existing blob is trusted only at the size the Hub gives (a torn or foreign file is fetched again;
  // its sha256 is not recomputed on every run: a 10 GB shard would take a minute).
  const auto complete = [&](int64_t size) {
    std::error_code ec;
    if (!fs::exists(blob, ec)) return false;
    const auto have = static_cast<int64_t>(fs::file_size(blob, ec));
    if (ec || size < 0 || have == size) return !ec;
    progress.note("the cached " + blob.string() + " of " + planned.path_in_repo + " has " + std::to_string(have) + " bytes, the Hub says " +
                  std::to_string(size) + ": downloading it again");
    return false;
  };
  if (!complete(planned.size)) {
    BlobLock lock(cache.lock_file(planned.etag), [&] { progress.note("waiting: another process is downloading " + planned.path_in_repo); });
    if (!complete(planned.size)) {  // the process we waited for may have finished it
      // The download URL of an LFS file is a signed storage URL that expires (X-Amz-Expires=3600 on the
      // Hub's): ask for it now, just before the bytes are fetched, not when the snapshot was planned
      // (later shards of a slow download would start with a dead URL), and again when it dies mid-file.
      FileMetadata meta = api.file_metadata(ref, commit, planned.path_in_repo);
      if (meta.etag != planned.etag)
        throw Error(ExitCode::kFailure, "Hub: " + what + " changed while it was being fetched (ETag " + planned.etag + ", now " + meta.etag +
                                            "); run again");
      std::error_code ec;
      fs::create_directories(blob.parent_path(), ec);
      // This process's own partial file (never shared with another writer), holding any abandoned partial
      // an earlier run left (taken over by rename: only one process gets it).
      const fs::path part = cache.own_partial(meta.etag);
      cache.take_over_partial(meta.etag);
      bool started = false;
      bool fresh_url = true;  // no byte arrived since the URL was fetched: a refusal now is not an expiry
      int attempt = 1;
      for (;;) {
        int64_t offset = file_size_or_zero(part);
        if (meta.size >= 0 && offset > meta.size) {  // longer than the file: not a prefix of it
          fs::remove(part);
          offset = 0;
        }
        if (meta.size >= 0 && offset == meta.size) {  // an earlier run got every byte, or the file is empty
          if (offset == 0)
            if (std::FILE* f = std::fopen(part.c_str(), "wb")) std::fclose(f);
          break;
        }
        if (!started) {
          if (offset > 0) progress.note("resuming " + meta.path_in_repo + " at " + human_bytes(offset) + " (" + part.string() + ")");
          progress.start_file(meta.path_in_repo, meta.size, offset);
          started = true;
        }
        OpenFile out;
        out.f = std::fopen(part.c_str(), offset > 0 ? "ab" : "wb");
        if (!out.f) throw Error(ExitCode::kFailure, "Hub cache: cannot write " + part.string() + ": " + std::strerror(errno));
        HttpRequest req;
        req.url = meta.download_url;
        req.headers = api.auth_headers(req.url);
        req.range_from = offset;
        req.connect_timeout_s = s.connect_timeout_s;
        req.stall_timeout_s = s.stall_timeout_s;
        HttpResponse res;
        try {
          res = api.http().download(
              req,
              [&](const HttpResponse& r) {
                // 200 to a range request: the server sends the whole file, so start the file again.
                if (offset > 0 && r.status == 200) {
                  if (std::freopen(part.c_str(), "wb", out.f) == nullptr) {
                    out.f = nullptr;
                    throw Error(ExitCode::kFailure, "Hub cache: cannot rewrite " + part.string());
                  }
                  progress.restart_file();
                  offset = 0;
                }
              },
              [&](const char* data, std::size_t n) {
                if (std::fwrite(data, 1, n, out.f) != n) return false;
                fresh_url = false;
                progress.advance(static_cast<int64_t>(n));
                return true;
              });
        } catch (const NetworkError& e) {
          std::fflush(out.f);
          const int64_t have = file_size_or_zero(part);
          if (attempt >= s.download_attempts)
            throw Error(ExitCode::kFailure, "Hub: downloading " + what + " failed after " + std::to_string(attempt) + " attempt" +
                                                (attempt > 1 ? "s" : "") + ": " + e.what() + "; the " + human_bytes(have) +
                                                " received are kept in " + part.string() + " and the next run resumes from there");
          const double wait = s.retry_backoff_s * (1 << std::min(attempt - 1, 5));
          progress.note("connection lost in " + meta.path_in_repo + " at " + human_bytes(have) + " (" + e.what() + "); resuming in " +
                        std::to_string(static_cast<int>(wait * 1000)) + " ms (attempt " + std::to_string(attempt + 1) + " of " +
                        std::to_string(s.download_attempts) + ")");
          std::this_thread::sleep_for(std::chrono::duration<double>(wait));
          ++attempt;
          continue;
        }
        if (std::fflush(out.f) != 0 || std::ferror(out.f))
          throw Error(ExitCode::kFailure, "Hub cache: writing " + part.string() + " failed (disk full?)");
        const std::string answered = res.url.empty() ? req.url : res.url;
        // A storage URL (not on the endpoint) refused: its signature expired while we downloaded or waited.
        // Ask the Hub for a fresh one and resume; once per URL that delivered bytes, so a storage that
        // refuses every URL ends in an error instead of a loop.
        if ((res.status == 401 || res.status == 403 || res.status == 410) && !api.on_endpoint(answered) && !fresh_url) {
          progress.note("the storage URL of " + meta.path_in_repo + " was refused (HTTP " + std::to_string(res.status) +
                        ", expired?); asking the Hub for a fresh one and resuming at " + human_bytes(file_size_or_zero(part)));
          const FileMetadata again = api.file_metadata(ref, commit, meta.path_in_repo);
          if (again.etag != meta.etag)
            throw Error(ExitCode::kFailure, "Hub: " + what + " changed while it was being fetched (ETag " + meta.etag + ", now " +
                                                again.etag + "); run again");
          meta.download_url = again.download_url;
          fresh_url = true;
          continue;
        }
        if (res.status == 416 && attempt < s.download_attempts) {  // our partial file is no prefix the server knows
          std::fclose(out.f);
          out.f = nullptr;
          fs::remove(part);
          ++attempt;
          continue;
        }
        if (res.status >= 500 && attempt < s.download_attempts) {
          progress.note("HTTP " + std::to_string(res.status) + " for " + meta.path_in_repo + "; retrying");
          std::this_thread::sleep_for(std::chrono::duration<double>(s.retry_backoff_s));
          ++attempt;
          continue;
        }
        if (res.status != 200 && res.status != 206) api.throw_for_status(res, ref, commit, meta.path_in_repo, answered);
        if (meta.size < 0) break;  // no size to check: the server said the body ended
        if (file_size_or_zero(part) >= meta.size) break;
        // A body that ended early without an error (a proxy cut it): resume like a dropped connection.
        if (attempt >= s.download_attempts)
          throw Error(ExitCode::kFailure, "Hub: " + what + ": the server ended the body at " + human_bytes(file_size_or_zero(part)) +
                                              " of " + human_bytes(meta.size) + "; kept in " + part.string() + " for the next run");
        ++attempt;
      }
      verify(part, meta, what, meta.download_url);
      try {
        publish_file(part, blob);  // fsync, rename, fsync blobs/
      } catch (const std::exception& e) {
        throw Error(ExitCode::kFailure, "Hub cache: cannot publish " + blob.string() + ": " + e.what());
      }
      if (started) progress.end_file();
    }
  }
  cache.link_snapshot_file(commit, planned.path_in_repo, planned.etag);
}

}  // namespace qtrain::hub
