#include "data/jinja/lexer.h"

#include <cstring>

#include "data/jinja/py_string.h"
#include "data/tokenizer/utf8.h"

namespace qtrain::jinja {
namespace {

// Python regex \s on str: Unicode whitespace.
size_t space_at(const std::string& s, size_t i) {
  if (i >= s.size()) return 0;
  const size_t n = utf8::sequence_length(s, i);
  if (n == 0) return 0;
  return py::is_space(utf8::decode(s, i, n)) ? n : 0;
}

size_t skip_spaces(const std::string& s, size_t i) {
  while (size_t n = space_at(s, i)) i += n;
  return i;
}

// str.rstrip() of s[b, e): the new end.
size_t rstrip_end(const std::string& s, size_t b, size_t e) {
  while (e > b) {
    size_t k = e - 1;
    while (k > b && (static_cast<unsigned char>(s[k]) & 0xC0) == 0x80) --k;
    if (space_at(s, k) != e - k) break;
    e = k;
  }
  return e;
}

bool starts(const std::string& s, size_t i, const char* lit) { return s.compare(i, std::strlen(lit), lit) == 0; }

bool is_digit(char c) { return c >= '0' && c <= '9'; }
bool is_name_start(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
bool is_name_char(char c) { return is_name_start(c) || is_digit(c); }

class Lexer {
 public:
  Lexer(LexedTemplate& t, const std::string& where) : t_(t), src_(t.source), where_(where) {}

  void run() {
    size_t pos = 0;
    while (pos < src_.size()) pos = root(pos);
    push(Tok::kEof, "", src_.size());
  }

 private:
  [[noreturn]] void fail(size_t offset, const std::string& msg) { throw TemplateError(where_, t_.pos(offset), msg); }

  void push(Tok type, std::string text, size_t offset) { t_.tokens.push_back(Token{type, std::move(text), 0, 0, offset}); }

  // Text before a tag, with the tag's whitespace control applied (jinja2's OptionalLStrip rule).
  void emit_text(size_t b, size_t e, char sign, bool is_variable) {
    if (sign == '-') {
      e = rstrip_end(src_, b, e);
    } else if (sign != '+' && !is_variable) {
      const size_t nl = src_.rfind('\n', e == 0 ? 0 : e - 1);
      const size_t l_pos = (nl == std::string::npos || nl < b) ? b : nl + 1;
      const bool line_starting = b == 0 || src_[b - 1] == '\n';
      if ((l_pos > b || line_starting) && l_pos < e && skip_spaces(src_, l_pos) >= e) e = l_pos;
    }
    if (e > b) push(Tok::kData, src_.substr(b, e - b), b);
  }

  // `{%[-+]?\s*raw\s*(-%}\s*|%})` at i: the end of the opener, or 0.
  size_t raw_opener(size_t i) const {
    size_t k = i + 2;
    if (k < src_.size() && (src_[k] == '-' || src_[k] == '+')) ++k;
    k = skip_spaces(src_, k);
    if (!starts(src_, k, "raw")) return 0;
    k = skip_spaces(src_, k + 3);
    if (starts(src_, k, "-%}")) return skip_spaces(src_, k + 3);
    if (starts(src_, k, "%}")) return k + 2;
    return 0;
  }

  size_t root(size_t pos) {
    size_t k = pos;
    for (;; ++k) {
      k = src_.find('{', k);
      if (k == std::string::npos || k + 1 >= src_.size()) {
        push(Tok::kData, src_.substr(pos), pos);
        return src_.size();
      }
      const char c = src_[k + 1];
      if (c == '{' || c == '%' || c == '#') break;
    }
    const char kind = src_[k + 1];
    const char sign = k + 2 < src_.size() && (src_[k + 2] == '-' || src_[k + 2] == '+') ? src_[k + 2] : 0;
    emit_text(pos, k, sign, kind == '{');
    size_t body = k + 2 + (sign ? 1 : 0);
    if (kind == '%') {
      if (size_t after = raw_opener(k)) return raw(after, k);
      push(Tok::kBlockBegin, "", k);
      return tag(body, false);
    }
    if (kind == '{') {
      push(Tok::kVarBegin, "", k);
      return tag(body, true);
    }
    const size_t end = src_.find("#}", body);
    if (end == std::string::npos) fail(k, "Missing end of comment tag");
    if (end > body && src_[end - 1] == '-') return skip_spaces(src_, end + 2);
    if (end > body && src_[end - 1] == '+') return end + 2;
    return end + 2 < src_.size() && src_[end + 2] == '\n' ? end + 3 : end + 2;  // trim_blocks
  }

  size_t raw(size_t pos, size_t opener) {
    for (size_t k = src_.find("{%", pos); k != std::string::npos; k = src_.find("{%", k + 1)) {
      size_t i = k + 2;
      char sign = 0;
      if (i < src_.size() && (src_[i] == '-' || src_[i] == '+')) sign = src_[i++];
      i = skip_spaces(src_, i);
      if (!starts(src_, i, "endraw")) continue;
      i = skip_spaces(src_, i + 6);
      size_t after;
      if (starts(src_, i, "+%}")) after = i + 3;
      else if (starts(src_, i, "-%}")) after = skip_spaces(src_, i + 3);
      else if (starts(src_, i, "%}")) after = i + 2 < src_.size() && src_[i + 2] == '\n' ? i + 3 : i + 2;
      else continue;
      emit_text(pos, k, sign, false);
      return after;
    }
    fail(opener, "Missing end of raw directive");
  }

  // Tokens of a {% %} or {{ }} tag up to its end; returns the offset after the end (and the
  // whitespace its control strips).
  size_t tag(size_t pos, bool variable) {
    std::vector<char> balance;
    const size_t opener = pos;
    while (true) {
      if (pos >= src_.size()) fail(opener, variable ? "unexpected end of template, expected '}}'" : "unexpected end of template, expected '%}'");
      if (balance.empty()) {
        if (variable) {
          if (starts(src_, pos, "-}}")) { push(Tok::kVarEnd, "", pos); return skip_spaces(src_, pos + 3); }
          if (starts(src_, pos, "}}")) { push(Tok::kVarEnd, "", pos); return pos + 2; }
        } else {
          if (starts(src_, pos, "+%}")) { push(Tok::kBlockEnd, "", pos); return pos + 3; }
          if (starts(src_, pos, "-%}")) { push(Tok::kBlockEnd, "", pos); return skip_spaces(src_, pos + 3); }
          if (starts(src_, pos, "%}")) {
            push(Tok::kBlockEnd, "", pos);
            return pos + 2 < src_.size() && src_[pos + 2] == '\n' ? pos + 3 : pos + 2;  // trim_blocks
          }
        }
      }
      if (size_t n = space_at(src_, pos)) { pos += n; continue; }
      const char c = src_[pos];
      if (is_digit(c)) { pos = number(pos); continue; }
      if (is_name_start(c)) {
        size_t e = pos;
        while (e < src_.size() && is_name_char(src_[e])) ++e;
        push(Tok::kName, src_.substr(pos, e - pos), pos);
        pos = e;
        continue;
      }
      if (c == '\'' || c == '"') { pos = string_literal(pos); continue; }
      static const char* const kOps[] = {"//", "**", "==", "!=", "<=", ">=", "+", "-", "/", "*", "%", "~", "[", "]",
                                         "(", ")", "{", "}", "<", ">", "=", ".", ":", "|", ",", ";"};
      const char* op = nullptr;
      for (const char* o : kOps)
        if (starts(src_, pos, o)) { op = o; break; }
      if (!op) fail(pos, std::string("unexpected char '") + src_.substr(pos, std::max<size_t>(1, utf8::sequence_length(src_, pos))) + "'");
      const std::string o(op);
      if (o == "{" || o == "(" || o == "[") balance.push_back(o == "{" ? '}' : o == "(" ? ')' : ']');
      if (o == "}" || o == ")" || o == "]") {
        if (balance.empty()) fail(pos, "unexpected '" + o + "'");
        if (balance.back() != o[0]) fail(pos, "unexpected '" + o + "', expected '" + std::string(1, balance.back()) + "'");
        balance.pop_back();
      }
      push(Tok::kOp, o, pos);
      pos += o.size();
    }
  }

  // jinja2's float_re and integer_re (underscores between digits, 0b / 0o / 0x prefixes).
  size_t number(size_t pos) {
    auto digits = [&](size_t i, auto ok) {
      size_t e = i;
      while (e < src_.size() && (ok(src_[e]) || (src_[e] == '_' && e > i && e + 1 < src_.size() && ok(src_[e + 1])))) ++e;
      return e;
    };
    auto dec = [](char ch) { return is_digit(ch); };
    const bool after_dot = pos > 0 && src_[pos - 1] == '.';
    if (!after_dot) {
      size_t e = digits(pos, dec);
      size_t f = e;
      bool is_float = false;
      if (f + 1 < src_.size() && src_[f] == '.' && is_digit(src_[f + 1])) f = digits(f + 1, dec), is_float = true;
      if (f < src_.size() && (src_[f] == 'e' || src_[f] == 'E')) {
        size_t g = f + 1;
        if (g < src_.size() && (src_[g] == '+' || src_[g] == '-')) ++g;
        if (g < src_.size() && is_digit(src_[g])) f = digits(g, dec), is_float = true;
      }
      if (is_float) {
        std::string text;
        for (size_t i = pos; i < f; ++i)
          if (src_[i] != '_') text += src_[i];
        push(Tok::kFloat, src_.substr(pos, f - pos), pos);
        t_.tokens.back().float_value = std::strtod(text.c_str(), nullptr);
        return f;
      }
    }
    int base = 10;
    size_t b = pos, e;
    if (src_[pos] == '0' && pos + 1 < src_.size() && std::strchr("bBoOxX", src_[pos + 1]) && src_[pos + 1] != '\0') {
      const char p = static_cast<char>(src_[pos + 1] | 0x20);
      base = p == 'b' ? 2 : p == 'o' ? 8 : 16;
      b = pos + 2;
      auto ok = [base](char ch) {
        if (base == 2) return ch == '0' || ch == '1';
        if (base == 8) return ch >= '0' && ch <= '7';
        return is_digit(ch) || ((ch | 0x20) >= 'a' && (ch | 0x20) <= 'f');
      };
      if (b < src_.size() && src_[b] == '_') ++b;
      e = digits(b, ok);
      if (e == b) base = 10, b = pos, e = pos + 1;  // just "0"
    } else if (src_[pos] == '0') {
      e = pos + 1;
      while (e + 1 < src_.size() && (src_[e] == '0' || (src_[e] == '_' && src_[e + 1] == '0'))) ++e;
    } else {
      e = digits(pos, dec);
    }
    std::string text;
    for (size_t i = b; i < e; ++i)
      if (src_[i] != '_') text += src_[i];
    errno = 0;
    const long long v = std::strtoll(text.c_str(), nullptr, base);
    if (errno == ERANGE) fail(pos, "integer literal out of range");
    push(Tok::kInt, src_.substr(pos, e - pos), pos);
    t_.tokens.back().int_value = v;
    return e;
  }

  // A quoted literal, decoded as jinja2 does (Python's unicode-escape: \n \t \\ \' \" \xhh \uXXXX
  // \UXXXXXXXX \ooo ...; an unknown escape keeps its backslash).
  size_t string_literal(size_t pos) {
    const char q = src_[pos];
    size_t i = pos + 1;
    std::string out;
    while (true) {
      if (i >= src_.size()) fail(pos, "unexpected end of template in a string literal");
      const char c = src_[i];
      if (c == q) break;
      if (c != '\\') { out += c; ++i; continue; }
      if (i + 1 >= src_.size()) fail(pos, "unexpected end of template in a string literal");
      const char e = src_[i + 1];
      i += 2;
      auto hex = [&](int n) {
        if (i + n > src_.size()) fail(pos, "truncated \\x / \\u escape in a string literal");
        unsigned long v = 0;
        for (int k = 0; k < n; ++k) {
          const char h = src_[i + k];
          if (!std::isxdigit(static_cast<unsigned char>(h))) fail(pos, "truncated \\x / \\u escape in a string literal");
          v = v * 16 + static_cast<unsigned long>(is_digit(h) ? h - '0' : (h | 0x20) - 'a' + 10);
        }
        i += n;
        if (v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) fail(pos, "escape outside Unicode scalar values in a string literal");
        utf8::append(out, static_cast<char32_t>(v));
      };
      switch (e) {
        case '\n': break;
        case '\\': out += '\\'; break;
        case '\'': out += '\''; break;
        case '"': out += '"'; break;
        case 'a': out += '\a'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'v': out += '\v'; break;
        case 'x': hex(2); break;
        case 'u': hex(4); break;
        case 'U': hex(8); break;
        default:
          if (e >= '0' && e <= '7') {
            unsigned v = static_cast<unsigned>(e - '0');
            for (int k = 0; k < 2 && i < src_.size() && src_[i] >= '0' && src_[i] <= '7'; ++k) v = v * 8 + static_cast<unsigned>(src_[i++] - '0');
            utf8::append(out, static_cast<char32_t>(v));
          } else {
            out += '\\';
            out += e;
          }
      }
    }
    push(Tok::kString, std::move(out), pos);
    return i + 1;
  }

  LexedTemplate& t_;
  const std::string& src_;
  const std::string& where_;
};

}  // namespace

SourcePos LexedTemplate::pos(size_t offset) const {
  SourcePos p;
  for (size_t i = 0; i < offset && i < source.size(); ++i) {
    if (source[i] == '\n') ++p.line, p.column = 1;
    else if ((static_cast<unsigned char>(source[i]) & 0xC0) != 0x80) ++p.column;
  }
  return p;
}

LexedTemplate lex(const std::string& source, const std::string& where) {
  if (const size_t bad = utf8::find_invalid(source); bad != std::string::npos)
    throw InputError(where + ": the template is not valid UTF-8 at byte " + std::to_string(bad));
  LexedTemplate t;
  t.source.reserve(source.size());
  for (size_t i = 0; i < source.size(); ++i) {
    if (source[i] == '\r') {
      t.source += '\n';
      if (i + 1 < source.size() && source[i + 1] == '\n') ++i;
    } else {
      t.source += source[i];
    }
  }
  if (!t.source.empty() && t.source.back() == '\n') t.source.pop_back();
  Lexer(t, where).run();
  return t;
}

}  // namespace qtrain::jinja
