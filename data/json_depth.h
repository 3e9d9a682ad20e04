// JSON nested deeper than any real input (configs, tokenizers and dataset records nest fewer than 20
// levels) is refused before it is parsed. nlohmann's parser itself is iterative, but dump(), copies
// and comparisons recurse once per level: a few hundred kB of '[' overflow the stack in them (found
// by tests/fuzz). The scan is one pass over the bytes, cheap beside the parse.
#pragma once

#include <cstddef>
#include <string_view>

namespace qtrain {

inline constexpr int kMaxJsonDepth = 512;

// The byte offset of the first '[' or '{' (outside strings) that opens level kMaxJsonDepth + 1, or
// npos when the text stays within the limit.
inline size_t json_too_deep_at(std::string_view text) {
  int depth = 0;
  bool in_string = false, escape = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (escape) escape = false;
      else if (c == '\\') escape = true;
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > kMaxJsonDepth) return i;
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return std::string_view::npos;
}

}  // namespace qtrain
