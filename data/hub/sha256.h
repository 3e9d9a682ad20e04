// SHA-256 (OpenSSL's libcrypto, which libcurl4-openssl-dev brings): the Hub's ETag of an LFS file is the
// sha256 of its content, so a downloaded (or resumed) blob is checked against it before it is published.
#pragma once

#include <cstddef>
#include <filesystem>
#include <memory>
#include <string>

namespace qtrain::hub {

class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;
  void update(const void* data, std::size_t n);
  std::string hex_digest();  // 64 lowercase hex digits; ends the hash

 private:
  void* ctx_;  // EVP_MD_CTX*
};

// The whole file's digest (re-read from disk: a resumed download has bytes from an earlier process).
// Throws Error naming the file when it cannot be read.
std::string sha256_file(const std::filesystem::path& file);

}  // namespace qtrain::hub
