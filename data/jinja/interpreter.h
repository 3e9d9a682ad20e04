// Executes a parsed template: jinja2's scoping (a for loop's body gets a fresh scope each iteration,
// so `set` inside a loop does not leak out -- the reason templates use namespace(); `if` does not
// scope; macros see the scope they were defined in), the loop object (index, index0, revindex,
// first, last, length, previtem, nextitem, cycle, changed), break / continue, macros and call blocks,
// filter and set blocks, and the output positions of {% generation %} blocks. Every failure is a
// TemplateError at the line and column of the expression or tag that failed.
#pragma once

#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "data/jinja/ast.h"
#include "data/jinja/lexer.h"

namespace qtrain::jinja {

// Byte ranges [begin, end) of the rendered text produced inside {% generation %} blocks.
using Spans = std::vector<std::pair<size_t, size_t>>;

class Interpreter {
 public:
  // max_steps bounds the statements and loop iterations executed (0: no bound), for callers that run
  // untrusted templates under a time budget (the fuzzer).
  Interpreter(const LexedTemplate& lexed, const std::string& where, uint64_t max_steps = 0)
      : lexed_(lexed), where_(where), max_steps_(max_steps) {}

  // Renders `body` with `globals` (the template's variables and global functions) visible.
  std::string render(const Body& body, const DictPtr& globals, Spans* generation_spans);

  struct Frame {
    std::unordered_map<std::string, Value> vars;
    std::shared_ptr<Frame> parent;
  };
  using FramePtr = std::shared_ptr<Frame>;

  // A macro (or a call block's caller) invoked with arguments: its body rendered in a new scope whose
  // parent is the scope it was defined in.
  Value call_macro(const Node& macro, const FramePtr& defined_in, CallArgs& args, const Value& caller, const Body& body);

  // The `caller` a {% call %} block hands to the next macro invoked (taken by that macro).
  Value pending_caller;
  // namespace() objects made during the render, emptied when it ends (they may reference themselves).
  void track_namespace(const DictPtr& d) { namespaces_.push_back(d); }

 private:
  enum class Flow { kNormal, kBreak, kContinue };

  Value eval(const Expr& e);
  Value eval_inner(const Expr& e);
  Value eval_call(const Expr& e);
  CallArgs eval_args(const Expr& e);
  Flow exec_body(const Body& body);
  Flow exec(const Node& n);
  Flow exec_inner(const Node& n);
  Flow exec_for(const Node& n);
  std::string capture(const Body& body);
  Value apply_filter_chain(const Expr* chain, Value input);

  Value lookup(const std::string& name) const;
  void assign(const std::string& name, Value v);
  void assign_targets(const std::vector<std::string>& targets, const Value& v);

  [[noreturn]] void fail(size_t offset, const std::string& msg) const;

  const LexedTemplate& lexed_;
  const std::string& where_;
  FramePtr frame_;
  std::string* out_ = nullptr;
  std::string* root_out_ = nullptr;
  Spans* spans_ = nullptr;
  std::vector<std::weak_ptr<Dict>> namespaces_;
  uint64_t max_steps_ = 0, steps_ = 0;
  int depth_ = 0;  // macro call depth, bounded so a recursive macro is an error, not a stack overflow
};

}  // namespace qtrain::jinja
