// The Python methods templates call on values: str (strip, split, startswith, replace, ...), dict
// (items, keys, values, get) and list (index, count). Methods that would mutate a value are refused as
// jinja2's ImmutableSandboxedEnvironment refuses them (an undefined that fails when called).
#pragma once

#include <optional>
#include <string>

#include "data/jinja/value.h"

namespace qtrain::jinja {

// obj.name as a callable bound to obj, an undefined naming why (unsafe or unknown method of a str /
// list), or nullopt when obj has no such attribute (a dict: then the key is looked up).
std::optional<Value> bound_method(const Value& obj, const std::string& name);

}  // namespace qtrain::jinja
