// Splits a template into jinja2's token stream with transformers' environment: trim_blocks (the first
// newline after a block tag or comment goes), lstrip_blocks (spaces and tabs before a block tag or
// comment on its own line go), `-` / `+` whitespace control, {% raw %}, newlines normalised to \n and
// one trailing newline dropped (keep_trailing_newline=False). The rules follow jinja2's lexer.py
// regexes one for one; comments are dropped here.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "data/jinja/error.h"

namespace qtrain::jinja {

enum class Tok { kData, kVarBegin, kVarEnd, kBlockBegin, kBlockEnd, kName, kString, kInt, kFloat, kOp, kEof };

struct Token {
  Tok type;
  std::string text;  // data, name, operator, or the decoded string literal
  int64_t int_value = 0;
  double float_value = 0;
  size_t offset = 0;  // byte offset into the normalised source
};

struct LexedTemplate {
  std::string source;  // normalised: \r\n and \r -> \n, one trailing \n dropped
  std::vector<Token> tokens;
  SourcePos pos(size_t offset) const;  // line and column (code points) of a byte offset
};

// TemplateError naming `where` and the position for an unterminated tag, comment or string, an
// unknown character or unbalanced brackets.
LexedTemplate lex(const std::string& source, const std::string& where);

}  // namespace qtrain::jinja
