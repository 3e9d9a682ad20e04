// Helpers for the Jinja engine tests: render a template with variables given as JSON, at the frozen
// clock of the shared expected renderings (2025-03-14 09:26:53).
#pragma once

#include <gtest/gtest.h>

#include <string>

#include <nlohmann/json.hpp>

#include "data/jinja/error.h"
#include "data/jinja/json.h"
#include "data/jinja/template.h"

namespace qtrain::jinja {

// A row: template source, variables (JSON object), expected output or kError.
struct JinjaCase {
  const char* source;
  const char* vars;
  const char* expected;
};
inline constexpr const char* kError = nullptr;

inline std::string render_text(const std::string& source, const std::string& vars_json = "{}") {
  const Template t(source, "test.jinja");
  Dict vars;
  const auto j = nlohmann::ordered_json::parse(vars_json);
  for (auto it = j.begin(); it != j.end(); ++it) vars.set(it.key(), from_json(it.value()));
  return t.render(vars, parse_timestamp("2025-03-14T09:26:53", "test")).text;
}

inline void expect_render(const JinjaCase& c) {
  SCOPED_TRACE(std::string("template: ") + c.source + "\nvars: " + c.vars);
  if (c.expected == kError) {
    EXPECT_THROW(render_text(c.source, c.vars), TemplateError);
    return;
  }
  try {
    EXPECT_EQ(render_text(c.source, c.vars), c.expected);
  } catch (const std::exception& e) {
    ADD_FAILURE() << "threw: " << e.what();
  }
}

}  // namespace qtrain::jinja
