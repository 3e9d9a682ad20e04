#include "data/hub/url.h"

#include <algorithm>
#include <cctype>
#include <vector>

namespace qtrain::hub {
namespace {

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

// The length of "scheme:" at the start of s (0 when s has no scheme).
std::size_t scheme_length(const std::string& s) {
  if (s.empty() || !std::isalpha(static_cast<unsigned char>(s[0]))) return 0;
  for (std::size_t i = 1; i < s.size(); ++i) {
    const char c = s[i];
    if (c == ':') return i + 1;
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '+' && c != '-' && c != '.') return 0;
  }
  return 0;
}

// "scheme://authority" of an absolute URL, and where its path starts.
std::size_t authority_end(const std::string& url) {
  const std::size_t s = scheme_length(url);
  if (s == 0 || url.compare(s, 2, "//") != 0) return 0;
  const std::size_t e = url.find_first_of("/?#", s + 2);
  return e == std::string::npos ? url.size() : e;
}

std::string remove_dot_segments(const std::string& path) {
  std::vector<std::string> out;
  std::size_t i = 0;
  const bool absolute = !path.empty() && path[0] == '/';
  std::string last;
  while (i <= path.size()) {
    const std::size_t j = std::min(path.find('/', i), path.size());
    const std::string seg = path.substr(i, j - i);
    last = seg;
    if (seg == "..") {
      if (!out.empty()) out.pop_back();
    } else if (seg != "." && !(seg.empty() && j < path.size())) {
      out.push_back(seg);
    }
    i = j + 1;
  }
  std::string r = absolute ? "/" : "";
  for (std::size_t k = 0; k < out.size(); ++k) r += (k ? "/" : "") + out[k];
  if ((last == "." || last == "..") && (r.empty() || r.back() != '/')) r += "/";  // "a/.." is the folder a/
  return r;
}

// Splits the part after the authority into path and the rest ("?q#f").
void split_path(const std::string& s, std::string& path, std::string& rest) {
  const std::size_t q = s.find_first_of("?#");
  path = s.substr(0, q);
  rest = q == std::string::npos ? "" : s.substr(q);
}

}  // namespace

UrlOrigin url_origin(const std::string& url) {
  UrlOrigin o;
  const std::size_t s = scheme_length(url);
  const std::size_t end = authority_end(url);
  if (end == 0) return o;
  o.scheme = lower(url.substr(0, s - 1));
  std::string auth = url.substr(s + 2, end - s - 2);
  if (const std::size_t at = auth.rfind('@'); at != std::string::npos) auth = auth.substr(at + 1);
  std::string port;
  if (!auth.empty() && auth[0] == '[') {  // [v6]:port
    const std::size_t close = auth.find(']');
    if (close == std::string::npos) return o;
    o.host = lower(auth.substr(1, close - 1));
    if (close + 1 < auth.size() && auth[close + 1] == ':') port = auth.substr(close + 2);
  } else {
    const std::size_t colon = auth.rfind(':');
    o.host = lower(auth.substr(0, colon));
    if (colon != std::string::npos) port = auth.substr(colon + 1);
  }
  if (o.host.empty()) return o;
  if (port.empty()) {
    o.port = o.scheme == "https" ? 443 : o.scheme == "http" ? 80 : -1;
  } else {
    if (port.size() > 5 || !std::all_of(port.begin(), port.end(), [](unsigned char c) { return std::isdigit(c); })) return o;
    o.port = std::stoi(port);
  }
  o.ok = true;
  return o;
}

bool same_origin(const std::string& a, const std::string& b) {
  const UrlOrigin x = url_origin(a), y = url_origin(b);
  return x.ok && y.ok && x.scheme == y.scheme && x.host == y.host && x.port == y.port;
}

std::string resolve_location(const std::string& current, const std::string& location) {
  if (location.empty()) return current;
  const std::size_t cs = scheme_length(current);
  const std::size_t cend = authority_end(current);
  if (scheme_length(location) > 0) {  // absolute: only its dot segments are tidied
    const std::size_t e = authority_end(location);
    if (e == 0) return location;
    std::string path, rest;
    split_path(location.substr(e), path, rest);
    return location.substr(0, e) + remove_dot_segments(path) + rest;
  }
  if (cend == 0) return location;  // no base to resolve against
  if (location.compare(0, 2, "//") == 0) return resolve_location(current, current.substr(0, cs) + location);
  const std::string origin = current.substr(0, cend);
  std::string base_path, base_rest;
  split_path(current.substr(cend), base_path, base_rest);
  if (base_path.empty()) base_path = "/";
  std::string path, rest;
  split_path(location, path, rest);
  if (location[0] == '/') return origin + remove_dot_segments(path) + rest;
  if (path.empty()) {  // "?q" or "#f": the current path with a new query / fragment
    if (rest[0] == '#') {
      const std::size_t hash = base_rest.find('#');
      return origin + base_path + base_rest.substr(0, hash) + rest;
    }
    return origin + base_path + rest;
  }
  const std::string dir = base_path.substr(0, base_path.rfind('/') + 1);
  return origin + remove_dot_segments(dir + path) + rest;
}

}  // namespace qtrain::hub
