// JSON in and out of template values. Out: Python's json.dumps, which is what transformers' tojson
// filter calls (json.dumps(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)):
// separators ", " / ": " without indent and "," / ": " with it, floats as Python's repr, NaN and
// Infinity as Python writes them. In: parsed JSON (ordered: a dict keeps the file's key order, as
// Python's json.load does) as values.
#pragma once

#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "data/jinja/value.h"

namespace qtrain::jinja {

struct DumpOptions {
  bool ensure_ascii = false;
  std::optional<int64_t> indent;   // unset: one line
  std::optional<std::string> indent_text;  // indent given as a string (json.dumps accepts both)
  std::optional<std::pair<std::string, std::string>> separators;  // (item, key)
  bool sort_keys = false;
};

// EvalError for what json.dumps refuses (undefined, callables).
std::string json_dumps(const Value& v, const DumpOptions& options);

// An integer beyond int64 becomes a float (Python keeps it exact; such numbers do not occur in chat data).
Value from_json(const nlohmann::ordered_json& j);

}  // namespace qtrain::jinja
