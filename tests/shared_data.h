// The shared real test data (../shared/data, QTRAIN_SHARED_DATA): paths that tests skip on when absent.
#pragma once

#include <filesystem>

namespace qtrain::test_tools {

// The trained tiny Llama (llama2c-xs-tok512-hf), or an empty path when the shared data is absent.
inline std::filesystem::path shared_tiny_model() {
  const std::filesystem::path p = std::filesystem::path(QTRAIN_SHARED_DATA) / "models/llama2c-xs-tok512-hf";
  return std::filesystem::exists(p / "config.json") ? p : std::filesystem::path();
}

}  // namespace qtrain::test_tools
