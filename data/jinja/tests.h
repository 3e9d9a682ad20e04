// jinja2's tests (`x is defined`, `x is string`, `x is divisibleby 3`, ...), with jinja2's own
// definitions: `number` includes bool, `integer` does not, `iterable` is true for strings and
// undefined, `false` / `true` / `none` are identity tests.
#pragma once

#include <string>

#include "data/jinja/value.h"

namespace qtrain::jinja {

bool has_test(const std::string& name);
bool apply_test(const std::string& name, const Value& v, CallArgs& args);

}  // namespace qtrain::jinja
