// Tokenized examples in flat arrays, the layout of the HDF5 token cache and of what the Loader reads:
// example i is tokens[offsets[i] .. offsets[i+1]) with its trained mask alongside.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace qtrain {

struct ExampleView {
  std::span<const int32_t> ids;     // [length]
  std::span<const uint8_t> trained;  // [length] 1 = label
};

struct ExampleSet {
  std::vector<int32_t> tokens;          // [total_tokens]
  std::vector<uint8_t> trained;         // [total_tokens]
  std::vector<int64_t> offsets{0};      // [size() + 1], offsets[0] = 0, increasing
  int32_t pad_id = 0;                   // id written into padding (its label is always -100)

  int64_t size() const { return static_cast<int64_t>(offsets.size()) - 1; }
  int64_t length(int64_t i) const { return offsets[i + 1] - offsets[i]; }
  ExampleView at(int64_t i) const {
    const auto b = static_cast<size_t>(offsets[i]), n = static_cast<size_t>(length(i));
    return {std::span<const int32_t>(tokens).subspan(b, n), std::span<const uint8_t>(trained).subspan(b, n)};
  }
  void add(std::span<const int32_t> ids, std::span<const uint8_t> mask) {
    tokens.insert(tokens.end(), ids.begin(), ids.end());
    trained.insert(trained.end(), mask.begin(), mask.end());
    offsets.push_back(static_cast<int64_t>(tokens.size()));
  }
};

}  // namespace qtrain
