// Binds the positional and keyword arguments of a filter, test, method or global call to its
// parameters as Python would (missing required, unknown keyword and surplus arguments are errors).
#pragma once

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "data/jinja/error.h"
#include "data/jinja/value.h"

namespace qtrain::jinja {

struct Param {
  const char* name;
  std::optional<Value> default_value;  // nullopt: required
};

inline std::vector<Value> bind_args(const std::string& what, CallArgs& args, const std::vector<Param>& params) {
  if (args.positional.size() > params.size())
    throw EvalError(what + "() takes at most " + std::to_string(params.size()) + " arguments (" +
                    std::to_string(args.positional.size()) + " given)");
  std::vector<std::optional<Value>> out(params.size());
  for (size_t i = 0; i < args.positional.size(); ++i) out[i] = args.positional[i];
  for (auto& [name, v] : args.keyword) {
    size_t k = 0;
    while (k < params.size() && name != params[k].name) ++k;
    if (k == params.size()) throw EvalError(what + "() got an unexpected keyword argument '" + name + "'");
    if (out[k]) throw EvalError(what + "() got multiple values for argument '" + name + "'");
    out[k] = v;
  }
  std::vector<Value> values;
  for (size_t i = 0; i < params.size(); ++i) {
    if (!out[i] && !params[i].default_value) throw EvalError(what + "() missing required argument '" + params[i].name + "'");
    values.push_back(out[i] ? *out[i] : *params[i].default_value);
  }
  return values;
}

inline int64_t int_arg(const std::string& what, const Value& v) {
  if (v.is_int()) return v.as_int();
  if (v.is_bool()) return v.as_bool();
  throw EvalError(what + ": expected an integer, got " + type_name(v));
}

inline const std::string& str_arg(const std::string& what, const Value& v) {
  if (!v.is_string()) throw EvalError(what + ": expected a string, got " + type_name(v));
  return v.as_string();
}

// None / unset for "no value" (Python's optional str parameters such as strip(chars=None)).
inline std::optional<std::string> opt_str_arg(const std::string& what, const Value& v) {
  if (v.is_none() || v.is_undefined()) return std::nullopt;
  return str_arg(what, v);
}

}  // namespace qtrain::jinja
