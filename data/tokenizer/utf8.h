// UTF-8 checks and decoding shared by the tokenizers (which all take text as UTF-8 bytes).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "data/error.h"

namespace qtrain::utf8 {

// Bytes at s[i] that begin a well-formed sequence (RFC 3629: no overlongs, no surrogates, nothing above
// U+10FFFF): {length of the full sequence, how many of its bytes are present and valid}. A complete
// sequence has both equal; a malformed lead byte gives {0, 0}.
struct Prefix {
  size_t need = 0, have = 0;
};
inline Prefix valid_prefix(std::string_view s, size_t i) {
  const auto b = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char c = b(i);
  if (c < 0x80) return {1, 1};
  size_t n;
  unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (c >= 0xC2 && c <= 0xDF) n = 2;
  else if (c == 0xE0) n = 3, lo = 0xA0;
  else if (c == 0xED) n = 3, hi = 0x9F;
  else if (c >= 0xE1 && c <= 0xEF) n = 3;
  else if (c == 0xF0) n = 4, lo = 0x90;
  else if (c >= 0xF1 && c <= 0xF3) n = 4;
  else if (c == 0xF4) n = 4, hi = 0x8F;
  else return {};
  size_t k = 1;
  if (i + k < s.size() && b(i + k) >= lo && b(i + k) <= hi) {
    ++k;
    while (k < n && i + k < s.size() && (b(i + k) & 0xC0) == 0x80) ++k;
  }
  return {n, k};
}

// Length of the well-formed sequence starting at s[i], or 0 when it is malformed or cut short.
inline size_t sequence_length(std::string_view s, size_t i) {
  const Prefix p = valid_prefix(s, i);
  return p.have == p.need ? p.need : 0;
}

// Offset of the first malformed byte, or npos when s is valid UTF-8.
inline size_t find_invalid(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    const size_t n = sequence_length(s, i);
    if (n == 0) return i;
    i += n;
  }
  return std::string_view::npos;
}

inline void require_valid(std::string_view s) {
  if (const size_t at = find_invalid(s); at != std::string_view::npos)
    throw InputError("text is not valid UTF-8 at byte offset " + std::to_string(at));
}

// s with every ill-formed subsequence replaced by U+FFFD, one per maximal subpart (the Unicode Standard's
// recommended practice, ch. 3 "U+FFFD Substitution of Maximal Subparts"; what Python's
// decode(errors="replace") and Rust's String::from_utf8_lossy in HF tokenizers do). For showing decoded
// tokens to people: a token may end in the middle of a character.
inline std::string replace_invalid(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    const Prefix p = valid_prefix(s, i);
    if (p.have != 0 && p.have == p.need) {
      out.append(s.substr(i, p.need));
      i += p.need;
    } else {
      out += "\xEF\xBF\xBD";
      i += p.have == 0 ? 1 : p.have;
    }
  }
  return out;
}

// Code point of the valid sequence of length n at s[i].
inline char32_t decode(std::string_view s, size_t i, size_t n) {
  const auto b = [&](size_t k) { return static_cast<char32_t>(static_cast<unsigned char>(s[i + k])); };
  switch (n) {
    case 1: return b(0);
    case 2: return ((b(0) & 0x1F) << 6) | (b(1) & 0x3F);
    case 3: return ((b(0) & 0x0F) << 12) | ((b(1) & 0x3F) << 6) | (b(2) & 0x3F);
    default: return ((b(0) & 0x07) << 18) | ((b(1) & 0x3F) << 12) | ((b(2) & 0x3F) << 6) | (b(3) & 0x3F);
  }
}

inline void append(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

}  // namespace qtrain::utf8
