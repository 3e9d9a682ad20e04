// Redirects and the token rule (data/hub/url.h): Location resolved like Python's urljoin, "on the Hub"
// decided by scheme + host + port.
#include <gtest/gtest.h>

#include "data/hub/url.h"

namespace qtrain::hub {
namespace {

TEST(HubUrl, LocationResolvesLikeUrljoin) {
  const std::string cur = "https://huggingface.co/org/name/resolve/main/sub/config.json?x=1";
  // Absolute, with its own host.
  EXPECT_EQ(resolve_location(cur, "https://cdn-lfs.hf.co/repos/ab/cd?X-Amz-Expires=3600"), "https://cdn-lfs.hf.co/repos/ab/cd?X-Amz-Expires=3600");
  // Protocol-relative: the current scheme.
  EXPECT_EQ(resolve_location(cur, "//cdn.example.org/p/q"), "https://cdn.example.org/p/q");
  // Origin-relative: the current origin (the endpoint's, in a metadata chain), not its path.
  EXPECT_EQ(resolve_location(cur, "/api/resolve-cache/models/org/name/abc/config.json"),
            "https://huggingface.co/api/resolve-cache/models/org/name/abc/config.json");
  EXPECT_EQ(resolve_location("http://127.0.0.1:8080/a/b", "/c?d=e"), "http://127.0.0.1:8080/c?d=e");
  // Relative: against the current directory, dot segments removed.
  EXPECT_EQ(resolve_location(cur, "other.json"), "https://huggingface.co/org/name/resolve/main/sub/other.json");
  EXPECT_EQ(resolve_location(cur, "../x/y"), "https://huggingface.co/org/name/resolve/main/x/y");
  EXPECT_EQ(resolve_location(cur, "./z"), "https://huggingface.co/org/name/resolve/main/sub/z");
  EXPECT_EQ(resolve_location("https://h/a/b", "../../../../c"), "https://h/c");  // never above the root
  EXPECT_EQ(resolve_location("https://h", "x"), "https://h/x");
  EXPECT_EQ(resolve_location(cur, "?y=2"), "https://huggingface.co/org/name/resolve/main/sub/config.json?y=2");
  EXPECT_EQ(resolve_location("https://h/a/./b/../c", "https://h/a/./b/../c"), "https://h/a/c");
  EXPECT_EQ(resolve_location(cur, ""), cur);
}

TEST(HubUrl, OnTheHubMeansSameSchemeHostAndPort) {
  const std::string ep = "https://huggingface.co";
  EXPECT_TRUE(same_origin(ep, "https://huggingface.co/org/name/resolve/main/x"));
  EXPECT_TRUE(same_origin(ep, "https://HuggingFace.co:443/x"));
  EXPECT_TRUE(same_origin("http://127.0.0.1:8080", "http://127.0.0.1:8080/cdn/x"));
  EXPECT_TRUE(same_origin("http://h", "http://h:80/p"));
  EXPECT_TRUE(same_origin("http://[::1]:8080", "http://[::1]:8080/x"));
  // A prefix is not an origin: the token must not reach any of these.
  EXPECT_FALSE(same_origin(ep, "https://huggingface.co.evil.org/x"));
  EXPECT_FALSE(same_origin(ep, "https://huggingface.co@evil.org/x"));
  EXPECT_FALSE(same_origin(ep, "http://huggingface.co/x"));           // scheme
  EXPECT_FALSE(same_origin(ep, "https://huggingface.co:8443/x"));     // port
  EXPECT_FALSE(same_origin("http://127.0.0.1:8080", "http://127.0.0.1:80801/x"));
  EXPECT_FALSE(same_origin("http://127.0.0.1:8080", "http://localhost:8080/x"));
  EXPECT_FALSE(same_origin(ep, "/relative"));
  EXPECT_FALSE(same_origin(ep, "https://"));
  const UrlOrigin o = url_origin("https://user:pw@Cdn.Example.org:8443/p?q");
  EXPECT_TRUE(o.ok);
  EXPECT_EQ(o.scheme, "https");
  EXPECT_EQ(o.host, "cdn.example.org");
  EXPECT_EQ(o.port, 8443);
}

}  // namespace
}  // namespace qtrain::hub
