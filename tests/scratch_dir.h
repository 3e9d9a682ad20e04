// A fresh directory under the system temp directory for one test, removed with everything in it when
// the test ends (passed, failed or thrown). Named qtrain-<what>-<pid>-<random> so parallel ctest runs
// and repeated runs never share one.
#pragma once

#include <unistd.h>

#include <filesystem>
#include <random>
#include <string>

namespace qtrain::test_tools {

struct ScratchDir {
  std::filesystem::path path;
  explicit ScratchDir(const std::string& what)
      : path(std::filesystem::temp_directory_path() /
             ("qtrain-" + what + "-" + std::to_string(::getpid()) + "-" + std::to_string(std::random_device{}()))) {
    std::filesystem::create_directories(path);
  }
  ~ScratchDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
};

}  // namespace qtrain::test_tools
