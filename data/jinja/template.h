// A chat template: parsed once, rendered for many conversations, as transformers' compiled jinja2
// template (ImmutableSandboxedEnvironment with trim_blocks, lstrip_blocks, loopcontrols and its
// generation tag; globals raise_exception, strftime_now, namespace, dict, range; its tojson).
// The clock strftime_now reads is part of the render call, so a run renders the same text every time.
#pragma once

#include <ctime>
#include <memory>
#include <string>

#include "data/jinja/ast.h"
#include "data/jinja/interpreter.h"
#include "data/jinja/lexer.h"
#include "data/jinja/value.h"

namespace qtrain::jinja {

struct RenderResult {
  std::string text;
  Spans generation;  // byte ranges of {% generation %} output, in order
};

class Template {
 public:
  // TemplateError (with line and column) for a template that does not parse; `where` names it in
  // every message ("<model>/tokenizer_config.json chat_template").
  Template(const std::string& source, std::string where);

  // `vars` are the template's variables (messages, add_generation_prompt, bos_token, ...);
  // strftime_now formats `now` (a broken-down local time). Throws TemplateRaised for
  // raise_exception and TemplateError for any other failure.
  // max_steps: see Interpreter (0: unbounded, as transformers).
  RenderResult render(const Dict& vars, const std::tm& now, uint64_t max_steps = 0) const;

  const std::string& where() const { return where_; }
  // Whether the template uses transformers' {% generation %} marks.
  bool has_generation() const { return has_generation_; }

 private:
  std::string where_;
  LexedTemplate lexed_;
  Body body_;
  bool has_generation_ = false;
};

// "YYYY-MM-DDTHH:MM:SS" (or a date alone) as a broken-down time; UsageError naming `what` otherwise.
std::tm parse_timestamp(const std::string& text, const std::string& what);
std::string format_timestamp(const std::tm& t);

}  // namespace qtrain::jinja
