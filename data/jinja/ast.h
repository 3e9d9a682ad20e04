// The syntax tree of a template: expressions and statements as jinja2's parser builds them (nodes.py),
// each with the byte offset of its token for error positions.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "data/jinja/value.h"

namespace qtrain::jinja {

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Kwarg {
  std::string name;
  ExprPtr value;
};

struct Expr {
  enum class Kind {
    kLiteral,    // value
    kName,       // name
    kList,       // items
    kTuple,      // items
    kDict,       // keys[i]: items[2i], values: items[2i+1]
    kGetAttr,    // a.name
    kGetItem,    // a[b]
    kSlice,      // a[b:c:d] (null parts are None)
    kCall,       // a(args, kwargs)
    kFilter,     // a | name(args, kwargs)
    kTest,       // a is [not] name(args, kwargs)
    kUnary,      // op a: "not", "-", "+"
    kBinary,     // a op b: arithmetic, "~", "and", "or"
    kCompare,    // a op1 b op2 c ...: ops / items (chained as Python)
    kCondition,  // b if a else c (c may be null)
  };
  Kind kind;
  size_t offset = 0;
  Value value;                 // kLiteral
  std::string name;            // kName, kGetAttr, kFilter, kTest; op of kUnary / kBinary
  bool negated = false;        // kTest
  ExprPtr a, b, c;             // operands
  std::vector<ExprPtr> items;  // list / tuple / dict items, call / filter / test positional args, compare operands
  std::vector<std::string> ops;  // kCompare
  std::vector<Kwarg> kwargs;
};

struct Node;
using NodePtr = std::unique_ptr<Node>;
using Body = std::vector<NodePtr>;

struct MacroParam {
  std::string name;
  ExprPtr default_value;  // null: required
};

struct Node {
  enum class Kind {
    kText,        // text
    kOutput,      // {{ expr }}
    kIf,          // conditions[i] -> bodies[i]; else_body
    kFor,         // targets in expr [if cond]: body; else_body
    kSet,         // targets (or attr target) = expr
    kSetBlock,    // {% set name | filters %}body{% endset %}
    kMacro,       // name(params): body
    kCallBlock,   // {% call(params) expr %}body{% endcall %}
    kFilterBlock, // {% filter f %}body
    kWith,        // {% with a = x %}body
    kBreak,
    kContinue,
    kGeneration,  // transformers' {% generation %}: the assistant text return_assistant_tokens_mask marks
  };
  Kind kind;
  size_t offset = 0;
  std::string text;                  // kText; macro name; set attribute for `set ns.attr`
  ExprPtr expr;                      // output, for iterable, set value, call expr, filter chain (on a null operand)
  ExprPtr cond;                      // for filter
  std::vector<std::string> targets;  // for / set names (several: tuple unpacking); set ns.attr: {ns}
  bool attr_target = false;          // set ns.attr = ...
  bool recursive = false;
  std::vector<ExprPtr> conditions;
  std::vector<Body> bodies;
  Body body, else_body;
  std::vector<MacroParam> params;
  std::vector<std::pair<std::string, ExprPtr>> assignments;  // with
};

}  // namespace qtrain::jinja
