// One file of a repository into the cache, the way huggingface_hub does it and compatible with it:
// under the blob's lock, bytes go to blobs/<etag>.incomplete (resumed with a Range request from what
// an earlier try left), are checked (size; sha256 when the etag is one), fsynced and renamed to
// blobs/<etag>; then snapshots/<commit>/<file> links to it. A dropped connection resumes up to
// settings.download_attempts times; when they run out the partial file stays for the next run.
#pragma once

#include <string>

#include "data/hub/download_progress.h"
#include "data/hub/hub_api.h"
#include "data/hub/hub_cache.h"

namespace qtrain::hub {

// Makes blobs/<meta.etag> exist and be complete (downloading it unless another process did), then links
// snapshots/<commit>/<meta.path_in_repo>. `meta` is the plan's; the download URL is asked for again just
// before the bytes are fetched, and once more whenever the storage refuses a URL that had been working
// (signed storage URLs expire: an hour on the Hub). Throws Error naming the repo, file, URL and the kept partial
// file on failure.
void fetch_into_cache(HubApi& api, const HubCache& cache, const HubRef& ref, const std::string& commit, const FileMetadata& meta,
                      DownloadProgress& progress);

}  // namespace qtrain::hub
