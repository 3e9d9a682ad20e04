// HTTP for the Hub over libcurl: one request at a time, the headers of the final response, the body
// into a string or streamed to a sink. It knows nothing of the Hub: statuses are returned, not judged;
// only a failure to get any response (DNS, refused, reset, timeout, stall) throws, as NetworkError.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace qtrain::hub {

struct HttpRequest {
  std::string url;
  std::vector<std::string> headers;   // "Name: value"
  bool head = false;                  // HEAD instead of GET
  bool follow_redirects = true;       // false: a 3xx comes back with its Location header
  int64_t range_from = 0;             // > 0: "Range: bytes=N-" (resume); the server may ignore it (200)
  double timeout_s = 0;               // whole request; 0 = none (downloads: the stall limit bounds them)
  double connect_timeout_s = 10;
  double stall_timeout_s = 30;        // abort when fewer than 1 byte/s arrived for this long
};

struct HttpResponse {
  long status = 0;
  std::string url;                            // after redirects
  std::map<std::string, std::string> headers;  // of the final response, names lower-cased
  std::string body;                            // fetch(); download(): only for a status >= 300 (for messages)

  std::string header(const std::string& lower_name) const {
    const auto it = headers.find(lower_name);
    return it == headers.end() ? std::string() : it->second;
  }
};

// No response: what libcurl said, and the URL.
class NetworkError : public std::runtime_error {
 public:
  explicit NetworkError(const std::string& what) : std::runtime_error(what) {}
};

class HttpClient {
 public:
  explicit HttpClient(std::string user_agent);
  ~HttpClient();
  HttpClient(const HttpClient&) = delete;
  HttpClient& operator=(const HttpClient&) = delete;

  HttpResponse fetch(const HttpRequest& req);

  // Streams a 2xx body to `sink` (which returns false to abort: a write error); `on_start` sees the
  // final response's status and headers before the first byte (206: the range was honoured; 200: the
  // body starts at byte 0). Returns the response. Throws NetworkError when the transfer breaks off; what
  // arrived before that has already gone to `sink`.
  using Sink = std::function<bool(const char* data, std::size_t n)>;
  using OnStart = std::function<void(const HttpResponse& res)>;
  HttpResponse download(const HttpRequest& req, const OnStart& on_start, const Sink& sink);

 private:
  HttpResponse perform(const HttpRequest& req, const OnStart* on_start, const Sink* sink);
  void* curl_;  // CURL*, reused so connections are kept alive across the many small requests of a snapshot
  std::string user_agent_;
};

}  // namespace qtrain::hub
