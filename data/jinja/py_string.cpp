#include "data/jinja/py_string.h"

#include <algorithm>

#include "data/jinja/error.h"
#include "data/tokenizer/utf8.h"

namespace qtrain::jinja::py {
namespace {

// Code points where Python's str.upper/lower differ from identity outside ASCII (Latin-1 and later
// alphabets). Not mapped here: refusing is better than rendering different text from transformers.
bool cased_non_ascii(char32_t c) {
  return (c >= 0xB5 && c <= 0x24F && c != 0xD7 && c != 0xF7 && !(c >= 0xB6 && c <= 0xBF)) ||
         (c >= 0x370 && c <= 0x58F) || (c >= 0x10A0 && c <= 0x10FF) || (c >= 0x13A0 && c <= 0x13FF) ||
         (c >= 0x1C80 && c <= 0x1CBF) || (c >= 0x1D00 && c <= 0x1FFF) || (c >= 0x2100 && c <= 0x218F) ||
         (c >= 0x24B6 && c <= 0x24E9) || (c >= 0x2C00 && c <= 0x2D2F) || (c >= 0xA640 && c <= 0xA7FF) ||
         (c >= 0xAB30 && c <= 0xABBF) || (c >= 0xFB00 && c <= 0xFB17) || (c >= 0xFF21 && c <= 0xFF5A) ||
         (c >= 0x10400 && c <= 0x104FF) || (c >= 0x10C80 && c <= 0x10CFF) || (c >= 0x118A0 && c <= 0x118FF) ||
         (c >= 0x16E40 && c <= 0x16E7F) || (c >= 0x1E900 && c <= 0x1E95F);
}

void require_ascii_case(const std::vector<char32_t>& cps, const char* op) {
  for (char32_t c : cps)
    if (cased_non_ascii(c))
      throw EvalError(std::string("str.") + op + " of non-ASCII letters (U+" + [&] {
        char b[16];
        std::snprintf(b, sizeof b, "%04X", static_cast<unsigned>(c));
        return std::string(b);
      }() + ") is not supported: Python's Unicode case tables are not built in");
}

bool ascii_upper(char32_t c) { return c >= 'A' && c <= 'Z'; }
bool ascii_lower(char32_t c) { return c >= 'a' && c <= 'z'; }
char32_t to_up(char32_t c) { return ascii_lower(c) ? c - 32 : c; }
char32_t to_low(char32_t c) { return ascii_upper(c) ? c + 32 : c; }

// Python's str.isprintable() is false for these: Cc, Cf, Zs but space, Zl, Zp, Co, Cs (the common
// ones; unassigned code points are printed as they are).
bool non_printable(char32_t c) {
  return c < 0x20 || (c >= 0x7F && c <= 0xA0) || c == 0xAD || c == 0x600 || c == 0x61C || c == 0x6DD ||
         c == 0x70F || c == 0x1680 || c == 0x180E || (c >= 0x2000 && c <= 0x200F) || (c >= 0x2028 && c <= 0x202F) ||
         (c >= 0x205F && c <= 0x2064) || (c >= 0x2066 && c <= 0x206F) || c == 0x3000 || (c >= 0xD800 && c <= 0xF8FF) ||
         c == 0xFEFF || (c >= 0xFFF9 && c <= 0xFFFB) || (c >= 0xF0000);
}

std::vector<char32_t> chars_of(const std::optional<std::string>& chars) {
  return chars ? decode(*chars) : std::vector<char32_t>{};
}

}  // namespace

bool is_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

std::vector<char32_t> decode(std::string_view s) {
  std::vector<char32_t> out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    size_t n = utf8::sequence_length(s, i);
    if (n == 0) throw EvalError("text is not valid UTF-8 at byte " + std::to_string(i));
    out.push_back(utf8::decode(s, i, n));
    i += n;
  }
  return out;
}

std::string encode(const std::vector<char32_t>& cps, size_t begin, size_t end, int64_t step) {
  std::string out;
  if (step > 0) {
    for (size_t i = begin; i < end; i += static_cast<size_t>(step)) utf8::append(out, cps[i]);
  } else {
    // begin > end here (exclusive end may be "before the start", passed as SIZE_MAX wrap by callers).
    for (int64_t i = static_cast<int64_t>(begin); i > static_cast<int64_t>(end); i += step) utf8::append(out, cps[i]);
  }
  return out;
}

size_t length(std::string_view s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

std::string strip(std::string_view s, const std::optional<std::string>& chars, bool left, bool right) {
  const auto cps = decode(s);
  const auto set = chars_of(chars);
  auto drop = [&](char32_t c) { return chars ? std::find(set.begin(), set.end(), c) != set.end() : is_space(c); };
  size_t b = 0, e = cps.size();
  if (left) while (b < e && drop(cps[b])) ++b;
  if (right) while (e > b && drop(cps[e - 1])) --e;
  return encode(cps, b, e);
}

std::vector<std::string> split(std::string_view s, const std::optional<std::string>& sep, int64_t maxsplit, bool from_right) {
  std::vector<std::string> out;
  if (sep) {
    if (sep->empty()) throw EvalError("str.split: empty separator");
    if (!from_right) {
      size_t pos = 0;
      while (maxsplit < 0 || static_cast<int64_t>(out.size()) < maxsplit) {
        size_t k = s.find(*sep, pos);
        if (k == std::string_view::npos) break;
        out.emplace_back(s.substr(pos, k - pos));
        pos = k + sep->size();
      }
      out.emplace_back(s.substr(pos));
    } else {
      size_t end = s.size();
      std::vector<std::string> rev;
      while (maxsplit < 0 || static_cast<int64_t>(rev.size()) < maxsplit) {
        if (end < sep->size()) break;
        size_t k = s.rfind(*sep, end - sep->size());
        if (k == std::string_view::npos) break;
        rev.emplace_back(s.substr(k + sep->size(), end - k - sep->size()));
        end = k;
      }
      rev.emplace_back(s.substr(0, end));
      out.assign(rev.rbegin(), rev.rend());
    }
    return out;
  }
  // Whitespace runs: no empty strings; maxsplit counts splits, the remainder keeps its inner spaces.
  const auto cps = decode(s);
  if (!from_right) {
    size_t i = 0, n = cps.size();
    while (true) {
      while (i < n && is_space(cps[i])) ++i;
      if (i == n) break;
      if (maxsplit >= 0 && static_cast<int64_t>(out.size()) == maxsplit) {
        size_t e = n;
        while (e > i && is_space(cps[e - 1])) --e;
        out.push_back(encode(cps, i, e));
        break;
      }
      size_t j = i;
      while (j < n && !is_space(cps[j])) ++j;
      out.push_back(encode(cps, i, j));
      i = j;
    }
  } else {
    size_t e = cps.size();
    std::vector<std::string> rev;
    while (true) {
      while (e > 0 && is_space(cps[e - 1])) --e;
      if (e == 0) break;
      if (maxsplit >= 0 && static_cast<int64_t>(rev.size()) == maxsplit) {
        size_t b = 0;
        while (b < e && is_space(cps[b])) ++b;
        rev.push_back(encode(cps, b, e));
        break;
      }
      size_t b = e;
      while (b > 0 && !is_space(cps[b - 1])) --b;
      rev.push_back(encode(cps, b, e));
      e = b;
    }
    out.assign(rev.rbegin(), rev.rend());
  }
  return out;
}

std::vector<std::string> splitlines(std::string_view s) {
  std::vector<std::string> lines;
  const auto cps = decode(s);
  size_t b = 0;
  for (size_t i = 0; i < cps.size(); ++i) {
    const char32_t c = cps[i];
    const bool br = c == '\n' || c == '\r' || c == 0x0B || c == 0x0C || (c >= 0x1C && c <= 0x1E) || c == 0x85 || c == 0x2028 || c == 0x2029;
    if (!br) continue;
    lines.push_back(encode(cps, b, i));
    if (c == '\r' && i + 1 < cps.size() && cps[i + 1] == '\n') ++i;
    b = i + 1;
  }
  if (b < cps.size()) lines.push_back(encode(cps, b, cps.size()));
  return lines;
}

std::string replace(std::string_view s, std::string_view old, std::string_view repl, int64_t count) {
  std::string out;
  int64_t done = 0;
  if (old.empty()) {
    const auto cps = decode(s);
    for (size_t i = 0; i <= cps.size(); ++i) {
      if (count < 0 || done < count) out += repl, ++done;
      if (i < cps.size()) utf8::append(out, cps[i]);
    }
    return out;
  }
  size_t pos = 0;
  while (count < 0 || done < count) {
    size_t k = s.find(old, pos);
    if (k == std::string_view::npos) break;
    out.append(s.substr(pos, k - pos));
    out.append(repl);
    pos = k + old.size();
    ++done;
  }
  out.append(s.substr(pos));
  return out;
}

std::string upper(std::string_view s) {
  auto cps = decode(s);
  require_ascii_case(cps, "upper");
  for (auto& c : cps) c = to_up(c);
  return encode(cps, 0, cps.size());
}

std::string lower(std::string_view s) {
  auto cps = decode(s);
  require_ascii_case(cps, "lower");
  for (auto& c : cps) c = to_low(c);
  return encode(cps, 0, cps.size());
}

std::string title(std::string_view s) {
  auto cps = decode(s);
  require_ascii_case(cps, "title");
  bool prev_cased = false;
  for (auto& c : cps) {
    const bool cased = ascii_upper(c) || ascii_lower(c);
    c = cased ? (prev_cased ? to_low(c) : to_up(c)) : c;
    prev_cased = cased;
  }
  return encode(cps, 0, cps.size());
}

std::string capitalize(std::string_view s) {
  auto cps = decode(s);
  require_ascii_case(cps, "capitalize");
  for (size_t i = 0; i < cps.size(); ++i) cps[i] = i == 0 ? to_up(cps[i]) : to_low(cps[i]);
  return encode(cps, 0, cps.size());
}

bool is_upper(std::string_view s) {
  const auto cps = decode(s);
  require_ascii_case(cps, "isupper");
  bool any = false;
  for (char32_t c : cps) {
    if (ascii_lower(c)) return false;
    any = any || ascii_upper(c);
  }
  return any;
}

bool is_lower(std::string_view s) {
  const auto cps = decode(s);
  require_ascii_case(cps, "islower");
  bool any = false;
  for (char32_t c : cps) {
    if (ascii_upper(c)) return false;
    any = any || ascii_lower(c);
  }
  return any;
}

std::string repr(std::string_view s) {
  const auto cps = decode(s);
  const bool has_single = std::find(cps.begin(), cps.end(), U'\'') != cps.end();
  const bool has_double = std::find(cps.begin(), cps.end(), U'"') != cps.end();
  const char quote = has_single && !has_double ? '"' : '\'';
  std::string out(1, quote);
  for (char32_t c : cps) {
    char buf[16];
    if (c == U'\\') out += "\\\\";
    else if (c == static_cast<char32_t>(quote)) out += '\\', out += quote;
    else if (c == U'\t') out += "\\t";
    else if (c == U'\n') out += "\\n";
    else if (c == U'\r') out += "\\r";
    else if (non_printable(c)) {
      if (c < 0x100) std::snprintf(buf, sizeof buf, "\\x%02x", static_cast<unsigned>(c));
      else if (c < 0x10000) std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(c));
      else std::snprintf(buf, sizeof buf, "\\U%08x", static_cast<unsigned>(c));
      out += buf;
    } else {
      utf8::append(out, c);
    }
  }
  out += quote;
  return out;
}

}  // namespace qtrain::jinja::py
