// Errors of the chat-template engine. Every error that leaves it names the template and the line and
// column of the construct that failed ("tokenizer_config.json chat_template:12:8: unknown filter
// 'foo'"); raise_exception() in a template is a TemplateRaised carrying the template's own message.
// All are InputError (exit code 3): the template is part of the model's files.
#pragma once

#include <stdexcept>
#include <string>

#include "data/error.h"

namespace qtrain::jinja {

// A position in the template source: 1-based line and column (column in code points).
struct SourcePos {
  int line = 1;
  int column = 1;
};

class TemplateError : public InputError {
 public:
  TemplateError(const std::string& where, SourcePos pos, const std::string& message)
      : InputError(where + ":" + std::to_string(pos.line) + ":" + std::to_string(pos.column) + ": " + message),
        message_(message),
        pos_(pos) {}
  const std::string& message() const { return message_; }  // without the location
  SourcePos pos() const { return pos_; }

 private:
  std::string message_;
  SourcePos pos_;
};

// The template called raise_exception(message): the conversation is one it refuses on purpose.
class TemplateRaised : public TemplateError {
 public:
  TemplateRaised(const std::string& where, SourcePos pos, const std::string& message)
      : TemplateError(where, pos, "raise_exception: " + message), raised_(message) {}
  const std::string& raised() const { return raised_; }

 private:
  std::string raised_;
};

// Thrown by the value operations, filters and methods, which do not know where they were called
// from; the interpreter rethrows it as a TemplateError at the node being evaluated.
class EvalError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace qtrain::jinja

namespace qtrain::jinja {

// Thrown by raise_exception(); the interpreter turns it into a TemplateRaised at the call.
struct RaiseRequest {
  std::string message;
};

}  // namespace qtrain::jinja
