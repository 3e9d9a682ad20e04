#include "data/hub/http_client.h"

#include <curl/curl.h>

#include <algorithm>
#include <cctype>
#include <exception>

namespace qtrain::hub {
namespace {

struct Transfer {
  CURL* curl = nullptr;
  HttpResponse* res = nullptr;
  const HttpClient::Sink* sink = nullptr;
  const HttpClient::OnStart* on_start = nullptr;
  bool started = false;
  std::exception_ptr error;  // thrown by the sink: rethrown after curl returns
  bool sink_refused = false;
};

std::size_t on_header(char* data, std::size_t size, std::size_t n, void* user) {
  auto* t = static_cast<Transfer*>(user);
  std::string line(data, size * n);
  while (!line.empty() && (line.back() == '\n' || line.back() == '\r')) line.pop_back();
  // Every response of a redirect chain starts with its status line: keep the last response's headers only.
  if (line.rfind("HTTP/", 0) == 0) {
    t->res->headers.clear();
    return size * n;
  }
  const std::size_t colon = line.find(':');
  if (colon == std::string::npos) return size * n;
  std::string name = line.substr(0, colon);
  std::transform(name.begin(), name.end(), name.begin(), [](unsigned char c) { return std::tolower(c); });
  std::size_t v = colon + 1;
  while (v < line.size() && (line[v] == ' ' || line[v] == '\t')) ++v;
  t->res->headers[name] = line.substr(v);
  return size * n;
}

std::size_t on_body(char* data, std::size_t size, std::size_t n, void* user) {
  auto* t = static_cast<Transfer*>(user);
  const std::size_t bytes = size * n;
  long status = 0;
  curl_easy_getinfo(t->curl, CURLINFO_RESPONSE_CODE, &status);
  // Error bodies (and redirect bodies) are kept for the message, never written to the file.
  if (!t->sink || status < 200 || status >= 300) {
    if (t->res->body.size() < 64 * 1024) t->res->body.append(data, bytes);
    return bytes;
  }
  try {
    if (!t->started) {
      t->started = true;
      t->res->status = status;
      if (t->on_start && *t->on_start) (*t->on_start)(*t->res);
    }
    if (!(*t->sink)(data, bytes)) {
      t->sink_refused = true;
      return 0;
    }
  } catch (...) {
    t->error = std::current_exception();
    return 0;
  }
  return bytes;
}

}  // namespace

HttpClient::HttpClient(std::string user_agent) : curl_(nullptr), user_agent_(std::move(user_agent)) {
  // curl_easy_init runs curl_global_init when nobody did: thread-safe since libcurl 7.84 (Debian 12 has 7.88).
  curl_ = curl_easy_init();
  if (!curl_) throw NetworkError("libcurl: curl_easy_init failed");
}

HttpClient::~HttpClient() { curl_easy_cleanup(static_cast<CURL*>(curl_)); }

HttpResponse HttpClient::fetch(const HttpRequest& req) { return perform(req, nullptr, nullptr); }

HttpResponse HttpClient::download(const HttpRequest& req, const OnStart& on_start, const Sink& sink) {
  return perform(req, &on_start, &sink);
}

HttpResponse HttpClient::perform(const HttpRequest& req, const OnStart* on_start, const Sink* sink) {
  CURL* c = static_cast<CURL*>(curl_);
  curl_easy_reset(c);
  HttpResponse res;
  Transfer t;
  t.curl = c, t.res = &res, t.sink = sink, t.on_start = on_start;
  curl_slist* headers = nullptr;
  for (const auto& h : req.headers) headers = curl_slist_append(headers, h.c_str());
  // Our own Range header, not CURLOPT_RESUME_FROM: libcurl fails a 200 answer to that, where we want to
  // restart from byte 0 on a server that does not do ranges.
  const std::string range = "Range: bytes=" + std::to_string(req.range_from) + "-";
  if (req.range_from > 0) headers = curl_slist_append(headers, range.c_str());
  const auto ms = [](double s) { return static_cast<long>(s * 1000); };
  curl_easy_setopt(c, CURLOPT_URL, req.url.c_str());
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers);
  curl_easy_setopt(c, CURLOPT_USERAGENT, user_agent_.c_str());
  curl_easy_setopt(c, CURLOPT_NOBODY, req.head ? 1L : 0L);
  // libcurl drops a custom Authorization header when a redirect leaves the host (7.58+): the token never
  // reaches the storage a 302 points at.
  curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, req.follow_redirects ? 1L : 0L);
  curl_easy_setopt(c, CURLOPT_MAXREDIRS, 10L);
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);  // timeouts without SIGALRM (the trainer owns signals)
  curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, ms(req.connect_timeout_s));
  if (req.timeout_s > 0) curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, ms(req.timeout_s));
  curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1L);
  curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, std::max(1L, static_cast<long>(req.stall_timeout_s)));
  // Ask for the bytes as stored: sizes and hashes are checked against the Hub's metadata.
  curl_easy_setopt(c, CURLOPT_ACCEPT_ENCODING, nullptr);
  curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(c, CURLOPT_HEADERDATA, &t);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, &t);
  char errbuf[CURL_ERROR_SIZE] = {0};
  curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);

  const CURLcode rc = curl_easy_perform(c);
  curl_slist_free_all(headers);
  if (t.error) std::rethrow_exception(t.error);
  curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &res.status);
  char* effective = nullptr;
  curl_easy_getinfo(c, CURLINFO_EFFECTIVE_URL, &effective);
  res.url = effective ? effective : req.url;
  if (rc != CURLE_OK) {
    if (t.sink_refused) throw NetworkError("writing the download from " + req.url + " failed");
    std::string why = errbuf[0] ? errbuf : curl_easy_strerror(rc);
    if (rc == CURLE_OPERATION_TIMEDOUT) why += " (no progress within the time limit: HF_HUB_ETAG_TIMEOUT / HF_HUB_DOWNLOAD_TIMEOUT)";
    throw NetworkError(why + " [" + req.url + "]");
  }
  return res;
}

}  // namespace qtrain::hub
