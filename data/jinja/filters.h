// jinja2's filters that chat templates use, with jinja2's definitions (filters.py), and transformers'
// tojson (json.dumps(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False): no HTML
// escaping, unlike jinja2's own). map/select/reject/selectattr/rejectattr return lists where jinja2
// returns generators (the same when joined, listed or iterated, which is how templates use them).
#pragma once

#include <string>

#include "data/jinja/value.h"

namespace qtrain::jinja {

bool has_filter(const std::string& name);
Value apply_filter(const std::string& name, const Value& v, CallArgs& args);

}  // namespace qtrain::jinja
