// URL helpers for redirects and the token rule: a Location header resolved like Python's urljoin, and
// "is this URL on the Hub?" decided by origin (scheme, host, port), never by string prefix.
#pragma once

#include <string>

namespace qtrain::hub {

struct UrlOrigin {
  std::string scheme;  // lower case
  std::string host;    // lower case, without brackets or userinfo
  int port = -1;       // the default port of the scheme when none is written (80, 443)
  bool ok = false;     // scheme://host was found
};

UrlOrigin url_origin(const std::string& url);

// True when both URLs parse and have the same scheme, host and port (http://h and http://h:80 are one).
bool same_origin(const std::string& a, const std::string& b);

// `location` (a redirect's Location) made absolute against `current` (the URL that answered): absolute
// URLs as they are, "//host/p" with current's scheme, "/p" on current's origin, "?q" on current's path,
// "x/y" against current's directory; "." and ".." segments removed (RFC 3986 §5.2, as urljoin does).
std::string resolve_location(const std::string& current, const std::string& location);

}  // namespace qtrain::hub
