// Python's str operations on UTF-8 text, by code point as Python indexes strings: length, indexing and
// slicing, whitespace (str.isspace: ASCII, U+1C..U+1F, U+85, U+A0, the Unicode spaces), strip / split /
// replace / case mapping. Case mapping covers ASCII; a cased non-ASCII letter is an EvalError rather
// than a silent difference from Python's full Unicode tables.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace qtrain::jinja::py {

bool is_space(char32_t c);
// Code points of valid UTF-8 text (templates and JSON data are validated before they get here).
std::vector<char32_t> decode(std::string_view s);
std::string encode(const std::vector<char32_t>& cps, size_t begin, size_t end, int64_t step = 1);
size_t length(std::string_view s);

// str.strip/lstrip/rstrip(chars): chars unset = whitespace.
std::string strip(std::string_view s, const std::optional<std::string>& chars, bool left, bool right);
// str.split(sep, maxsplit) / rsplit: sep unset = runs of whitespace, leading/trailing dropped.
std::vector<std::string> split(std::string_view s, const std::optional<std::string>& sep, int64_t maxsplit, bool from_right);
// str.replace(old, new, count); an empty `old` inserts `new` between code points, as Python does.
// str.splitlines(): \n, \r, \r\n, \v, \f, U+1C..U+1E, U+85, U+2028, U+2029 end lines.
std::vector<std::string> splitlines(std::string_view s);
std::string replace(std::string_view s, std::string_view old, std::string_view repl, int64_t count);
std::string upper(std::string_view s);
std::string lower(std::string_view s);
std::string title(std::string_view s);       // str.title()
std::string capitalize(std::string_view s);  // str.capitalize(): first upper, rest lower
bool is_upper(std::string_view s);           // str.isupper()
bool is_lower(std::string_view s);           // str.islower()
// repr(str): single quotes unless the text has ' and no ", escapes for \\, the quote, \t \n \r and
// non-printable code points (\xNN, \uNNNN, \UNNNNNNNN).
std::string repr(std::string_view s);

}  // namespace qtrain::jinja::py
