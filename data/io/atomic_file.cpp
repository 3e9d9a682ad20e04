#include "data/io/atomic_file.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <random>
#include <stdexcept>

namespace qtrain {
namespace fs = std::filesystem;

AtomicFile::AtomicFile(fs::path target) : target_(std::move(target)) {
  // Same directory so rename() is atomic; pid + random suffix so concurrent writers never collide.
  std::random_device rd;
  temp_ = target_;
  temp_ += ".tmp." + std::to_string(::getpid()) + "." + std::to_string(rd());
  f_ = std::fopen(temp_.c_str(), "wb");
  if (!f_) throw std::runtime_error(temp_.string() + ": cannot create: " + std::strerror(errno));
}

AtomicFile::~AtomicFile() {
  if (f_) {
    std::fclose(f_);
    std::error_code ec;
    fs::remove(temp_, ec);
  }
}

void AtomicFile::write(const void* data, std::size_t bytes) {
  if (!f_) throw std::logic_error(target_.string() + ": write after commit");
  if (bytes && std::fwrite(data, 1, bytes, f_) != bytes)
    throw std::runtime_error(temp_.string() + ": write failed: " + std::strerror(errno));
}

void AtomicFile::commit() {
  if (!f_) throw std::logic_error(target_.string() + ": committed twice");
  if (std::fflush(f_) != 0 || ::fsync(fileno(f_)) != 0)
    throw std::runtime_error(temp_.string() + ": flush failed: " + std::strerror(errno));
  std::fclose(f_);
  f_ = nullptr;
  std::error_code ec;
  fs::rename(temp_, target_, ec);
  if (ec) {
    fs::remove(temp_, ec);
    throw std::runtime_error(target_.string() + ": cannot rename temporary file into place: " + ec.message());
  }
}

void write_file_atomic(const fs::path& target, const std::string& contents) {
  AtomicFile f(target);
  f.write(contents.data(), contents.size());
  f.commit();
}

}  // namespace qtrain
