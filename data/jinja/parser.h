// Builds the syntax tree from the token stream with jinja2's grammar (parser.py: the same precedence,
// tuple rules, test-argument shorthand, chained comparisons, adjacent string literals). Tags: if /
// elif / else, for (loop filter, else, recursive refused), set (names, tuples, namespace attributes,
// blocks with filters), macro, call, filter, with, break / continue (loopcontrols), raw, and
// transformers' generation. Unknown tags, filters and tests are a TemplateError at their position.
#pragma once

#include <string>

#include "data/jinja/ast.h"
#include "data/jinja/lexer.h"

namespace qtrain::jinja {

Body parse(const LexedTemplate& lexed, const std::string& where);

}  // namespace qtrain::jinja
