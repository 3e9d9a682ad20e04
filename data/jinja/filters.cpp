#include "data/jinja/filters.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>

#include "data/jinja/args.h"
#include "data/jinja/json.h"
#include "data/jinja/operators.h"
#include "data/jinja/py_string.h"
#include "data/jinja/tests.h"

namespace qtrain::jinja {
namespace {

using FilterFn = Value (*)(const std::string& name, const Value& v, CallArgs& args);

// environment.getattr with jinja2's dotted paths ("a.b", "items.0") as attribute= of sort/map/....
Value attribute_of(const Value& v, const std::string& path) {
  Value cur = v;
  size_t b = 0;
  while (true) {
    const size_t e = path.find('.', b);
    const std::string part = path.substr(b, e == std::string::npos ? std::string::npos : e - b);
    bool digits = !part.empty() && std::all_of(part.begin(), part.end(), [](char c) { return c >= '0' && c <= '9'; });
    cur = digits ? get_item(cur, Value(static_cast<int64_t>(std::stoll(part)))) : get_item(cur, Value(part));
    if (e == std::string::npos) return cur;
    b = e + 1;
  }
}

// The sort key jinja2 uses when case_sensitive is false: strings lowercased.
Value sort_key(const Value& v, bool case_sensitive) {
  if (!case_sensitive && v.is_string()) return Value(py::lower(v.as_string()));
  return v;
}

std::vector<Value> sorted(std::vector<Value> items, bool reverse, bool case_sensitive, const Value& attribute) {
  std::vector<Value> keys;
  for (const auto& x : items) keys.push_back(sort_key(attribute.is_none() ? x : attribute_of(x, str_arg("sort", attribute)), case_sensitive));
  std::vector<size_t> order(items.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return reverse ? less_than(keys[b], keys[a]) : less_than(keys[a], keys[b]); });
  std::vector<Value> out;
  for (size_t i : order) out.push_back(items[i]);
  return out;
}

// select / reject / selectattr / rejectattr: args after the filter's own are the test and its args.
Value select_common(const std::string& name, const Value& v, CallArgs& args, bool want, bool by_attr) {
  std::string attr;
  size_t k = 0;
  if (by_attr) {
    if (args.positional.empty()) throw EvalError(name + "() missing the attribute");
    attr = str_arg(name, args.positional[k++]);
  }
  std::string test;
  if (k < args.positional.size()) test = str_arg(name, args.positional[k++]);
  CallArgs test_args;
  test_args.positional.assign(args.positional.begin() + static_cast<long>(k), args.positional.end());
  test_args.keyword = args.keyword;
  std::vector<Value> out;
  for (const auto& x : iterate(v)) {
    const Value subject = by_attr ? attribute_of(x, attr) : x;
    CallArgs a = test_args;
    const bool ok = test.empty() ? truthy(subject) : apply_test(test, subject, a);
    if (ok == want) out.push_back(x);
  }
  return Value::list(std::move(out));
}

std::string html_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&#34;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return out;
}

// Python's round(x, n) for floats: correctly rounded, ties to even on the exact binary value (what
// printf's %.*f does).
double py_round(double x, int64_t n) {
  if (!std::isfinite(x)) return x;
  if (n > 300 || n < -300) return n > 0 ? x : 0.0 * x;
  if (n >= 0) {
    char buf[512];
    std::snprintf(buf, sizeof buf, "%.*f", static_cast<int>(n), x);
    return std::strtod(buf, nullptr);
  }
  const double p = std::pow(10.0, static_cast<double>(-n));
  return std::nearbyint(x / p) * p;
}

Value do_join(const std::string& name, const Value& v, CallArgs& a) {
  auto p = bind_args(name, a, {{"d", Value("")}, {"attribute", Value(None{})}});
  std::string out;
  bool first = true;
  for (const auto& x : iterate(v)) {
    if (!first) out += to_str(p[0]);
    first = false;
    out += to_str(p[1].is_none() ? x : attribute_of(x, to_str(p[1])));
  }
  return Value(std::move(out));
}

Value do_tojson(const std::string& name, const Value& v, CallArgs& a) {
  auto p = bind_args(name, a, {{"ensure_ascii", Value(false)}, {"indent", Value(None{})}, {"separators", Value(None{})}, {"sort_keys", Value(false)}});
  DumpOptions o;
  o.ensure_ascii = truthy(p[0]);
  if (p[1].is_string()) o.indent_text = p[1].as_string();
  else if (!p[1].is_none()) o.indent = int_arg("tojson indent", p[1]);
  if (!p[2].is_none()) {
    if (!p[2].is_list() || p[2].as_list()->items.size() != 2) throw EvalError("tojson separators must be a pair of strings");
    o.separators = std::make_pair(str_arg("tojson separators", p[2].as_list()->items[0]), str_arg("tojson separators", p[2].as_list()->items[1]));
  }
  o.sort_keys = truthy(p[3]);
  return Value(json_dumps(v, o));
}

Value do_indent(const std::string& name, const Value& v, CallArgs& a) {
  auto p = bind_args(name, a, {{"width", Value(int64_t{4})}, {"first", Value(false)}, {"blank", Value(false)}});
  const std::string ind = p[0].is_string() ? p[0].as_string() : std::string(static_cast<size_t>(std::max<int64_t>(0, int_arg(name, p[0]))), ' ');
  // jinja2's quirk: a newline added so that splitlines keeps a trailing empty line.
  const auto lines = py::splitlines(to_str(v) + "\n");
  std::string out;
  if (truthy(p[2])) {
    for (size_t i = 0; i < lines.size(); ++i) out += (i ? "\n" + ind : "") + lines[i];
  } else {
    for (size_t i = 0; i < lines.size(); ++i) {
      if (i == 0) { out = lines[0]; continue; }
      out += "\n" + (lines[i].empty() ? "" : ind + lines[i]);
    }
  }
  if (truthy(p[1])) out = ind + out;
  return Value(std::move(out));
}

Value do_int(const std::string& name, const Value& v, CallArgs& a) {
  auto p = bind_args(name, a, {{"default", Value(int64_t{0})}, {"base", Value(int64_t{10})}});
  if (v.is_int()) return v;
  if (v.is_bool()) return Value(int64_t{v.as_bool()});
  if (v.is_float()) return std::isfinite(v.as_float()) ? Value(static_cast<int64_t>(std::trunc(v.as_float()))) : p[0];
  if (v.is_string()) {
    const std::string s = py::strip(v.as_string(), std::nullopt, true, true);
    std::string digits;
    for (char c : s)
      if (c != '_') digits += c;
    char* end = nullptr;
    errno = 0;
    const long long r = std::strtoll(digits.c_str(), &end, static_cast<int>(int_arg(name, p[1])));
    if (!digits.empty() && end && *end == '\0' && errno == 0) return Value(static_cast<int64_t>(r));
    const double d = std::strtod(s.c_str(), &end);
    if (!s.empty() && end && *end == '\0' && std::isfinite(d)) return Value(static_cast<int64_t>(std::trunc(d)));
  }
  return p[0];
}

Value do_float(const std::string& name, const Value& v, CallArgs& a) {
  auto p = bind_args(name, a, {{"default", Value(0.0)}});
  if (v.is_number()) return Value(v.to_double());
  if (v.is_string()) {
    const std::string s = py::strip(v.as_string(), std::nullopt, true, true);
    char* end = nullptr;
    const double d = std::strtod(s.c_str(), &end);
    if (!s.empty() && end && *end == '\0') return Value(d);
  }
  return p[0];
}

Value first_or_last(const Value& v, bool last) {
  const auto items = iterate(v);
  if (items.empty()) return Value(Undefined{last ? "No last item, sequence was empty." : "No first item, sequence was empty."});
  return last ? items.back() : items.front();
}

Value do_unique(const std::string& name, const Value& v, CallArgs& a) {
  auto p = bind_args(name, a, {{"case_sensitive", Value(false)}, {"attribute", Value(None{})}});
  std::vector<Value> out, seen;
  for (const auto& x : iterate(v)) {
    const Value key = sort_key(p[1].is_none() ? x : attribute_of(x, str_arg(name, p[1])), truthy(p[0]));
    if (std::any_of(seen.begin(), seen.end(), [&](const Value& s) { return equals(s, key); })) continue;
    seen.push_back(key);
    out.push_back(x);
  }
  return Value::list(std::move(out));
}

Value min_max(const std::string& name, const Value& v, CallArgs& a, bool want_max) {
  auto p = bind_args(name, a, {{"case_sensitive", Value(false)}, {"attribute", Value(None{})}});
  const auto items = iterate(v);
  if (items.empty()) return Value(Undefined{"No aggregated item, sequence was empty."});
  size_t best = 0;
  auto key = [&](size_t i) { return sort_key(p[1].is_none() ? items[i] : attribute_of(items[i], str_arg(name, p[1])), truthy(p[0])); };
  for (size_t i = 1; i < items.size(); ++i)
    if (want_max ? less_than(key(best), key(i)) : less_than(key(i), key(best))) best = i;
  return items[best];
}

Value do_map(const std::string& name, const Value& v, CallArgs& a) {
  std::vector<Value> out;
  const Value* attr = nullptr;
  std::optional<Value> dflt;
  for (auto& [k, val] : a.keyword) {
    if (k == "attribute") attr = &val;
    else if (k == "default") dflt = val;
  }
  if (attr) {
    for (const auto& x : iterate(v)) {
      Value r = attribute_of(x, to_str(*attr));
      out.push_back(r.is_undefined() && dflt ? *dflt : r);
    }
    return Value::list(std::move(out));
  }
  if (a.positional.empty()) throw EvalError("map() needs a filter name or attribute=");
  const std::string f = str_arg(name, a.positional[0]);
  CallArgs rest;
  rest.positional.assign(a.positional.begin() + 1, a.positional.end());
  rest.keyword = a.keyword;
  for (const auto& x : iterate(v)) {
    CallArgs each = rest;
    out.push_back(apply_filter(f, x, each));
  }
  return Value::list(std::move(out));
}

const std::map<std::string, FilterFn>& registry() {
  static const std::map<std::string, FilterFn> filters = {
      {"abs",
       [](const std::string& n, const Value& v, CallArgs& a) {
         bind_args(n, a, {});
         if (v.is_float()) return Value(std::fabs(v.as_float()));
         return v.is_number() && v.to_double() < 0 ? negate(v) : positive(v);
       }},
      {"attr", [](const std::string& n, const Value& v, CallArgs& a) { return get_attr(v, str_arg(n, bind_args(n, a, {{"name", std::nullopt}})[0])); }},
      {"capitalize", [](const std::string& n, const Value& v, CallArgs& a) { bind_args(n, a, {}); return Value(py::capitalize(to_str(v))); }},
      {"lower", [](const std::string& n, const Value& v, CallArgs& a) { bind_args(n, a, {}); return Value(py::lower(to_str(v))); }},
      {"upper", [](const std::string& n, const Value& v, CallArgs& a) { bind_args(n, a, {}); return Value(py::upper(to_str(v))); }},
      {"title", [](const std::string& n, const Value& v, CallArgs& a) { bind_args(n, a, {}); return Value(py::title(to_str(v))); }},
      {"default",
       [](const std::string& n, const Value& v, CallArgs& a) {
         auto p = bind_args(n, a, {{"default_value", Value("")}, {"boolean", Value(false)}});
         return v.is_undefined() || (truthy(p[1]) && !truthy(v)) ? p[0] : v;
       }},
      {"dictsort",
       [](const std::string& n, const Value& v, CallArgs& a) {
         auto p = bind_args(n, a, {{"case_sensitive", Value(false)}, {"by", Value("key")}, {"reverse", Value(false)}});
         if (!v.is_dict()) throw EvalError("dictsort: expected a dict, got " + type_name(v));
         std::vector<Value> pairs;
         for (const auto& [k, x] : v.as_dict()->items) pairs.push_back(Value::list({Value(k), x}, true));
         const std::string by = str_arg(n, p[1]);
         if (by != "key" && by != "value") throw EvalError("dictsort: You can only sort by either 'key' or 'value'");
         return Value::list(sorted(pairs, truthy(p[2]), truthy(p[0]), Value(by == "key" ? "0" : "1")));
       }},
      {"escape", [](const std::string& n, const Value& v, CallArgs& a) { bind_args(n, a, {}); return Value(html_escape(to_str(v))); }},
      {"first", [](const std::string& n, const Value& v, CallArgs& a) { bind_args(n, a, {}); return first_or_last(v, false); }},
      {"last", [](const std::string& n, const Value& v, CallArgs& a) { bind_args(n, a, {}); return first_or_last(v, true); }},
      {"float", &do_float},
      {"int", &do_int},
      {"indent", &do_indent},
      {"items",
       [](const std::string& n, const Value& v, CallArgs& a) {
         bind_args(n, a, {});
         if (v.is_undefined()) return Value::list();
         if (!v.is_dict()) throw EvalError("Can only get item pairs from a mapping.");
         std::vector<Value> out;
         for (const auto& [k, x] : v.as_dict()->items) out.push_back(Value::list({Value(k), x}, true));
         return Value::list(std::move(out));
       }},
      {"join", &do_join},
      {"length", [](const std::string& n, const Value& v, CallArgs& a) { bind_args(n, a, {}); return Value(length_of(v)); }},
      {"list", [](const std::string& n, const Value& v, CallArgs& a) { bind_args(n, a, {}); return Value::list(iterate(v)); }},
      {"map", &do_map},
      {"max", [](const std::string& n, const Value& v, CallArgs& a) { return min_max(n, v, a, true); }},
      {"min", [](const std::string& n, const Value& v, CallArgs& a) { return min_max(n, v, a, false); }},
      {"select", [](const std::string& n, const Value& v, CallArgs& a) { return select_common(n, v, a, true, false); }},
      {"reject", [](const std::string& n, const Value& v, CallArgs& a) { return select_common(n, v, a, false, false); }},
      {"selectattr", [](const std::string& n, const Value& v, CallArgs& a) { return select_common(n, v, a, true, true); }},
      {"rejectattr", [](const std::string& n, const Value& v, CallArgs& a) { return select_common(n, v, a, false, true); }},
      {"replace",
       [](const std::string& n, const Value& v, CallArgs& a) {
         auto p = bind_args(n, a, {{"old", std::nullopt}, {"new", std::nullopt}, {"count", Value(None{})}});
         return Value(py::replace(to_str(v), to_str(p[0]), to_str(p[1]), p[2].is_none() ? -1 : int_arg(n, p[2])));
       }},
      {"reverse",
       [](const std::string& n, const Value& v, CallArgs& a) {
         bind_args(n, a, {});
         if (v.is_string()) return slice(v, Value(None{}), Value(None{}), Value(int64_t{-1}));
         auto items = iterate(v);
         std::reverse(items.begin(), items.end());
         return Value::list(std::move(items));
       }},
      {"round",
       [](const std::string& n, const Value& v, CallArgs& a) {
         auto p = bind_args(n, a, {{"precision", Value(int64_t{0})}, {"method", Value("common")}});
         const std::string m = str_arg(n, p[1]);
         const int64_t prec = int_arg(n, p[0]);
         const double x = v.to_double();
         if (m == "common") return Value(py_round(x, prec));
         const double scale = std::pow(10.0, static_cast<double>(prec));
         if (m == "ceil") return Value(std::ceil(x * scale) / scale);
         if (m == "floor") return Value(std::floor(x * scale) / scale);
         throw EvalError("method must be common, ceil or floor");
       }},
      {"safe", [](const std::string& n, const Value& v, CallArgs& a) { bind_args(n, a, {}); return v; }},
      {"sort",
       [](const std::string& n, const Value& v, CallArgs& a) {
         auto p = bind_args(n, a, {{"reverse", Value(false)}, {"case_sensitive", Value(false)}, {"attribute", Value(None{})}});
         return Value::list(sorted(iterate(v), truthy(p[0]), truthy(p[1]), p[2]));
       }},
      {"string", [](const std::string& n, const Value& v, CallArgs& a) { bind_args(n, a, {}); return Value(to_str(v)); }},
      {"sum",
       [](const std::string& n, const Value& v, CallArgs& a) {
         auto p = bind_args(n, a, {{"attribute", Value(None{})}, {"start", Value(int64_t{0})}});
         Value total = p[1];
         for (const auto& x : iterate(v)) total = binary_op("+", total, p[0].is_none() ? x : attribute_of(x, to_str(p[0])));
         return total;
       }},
      {"tojson", &do_tojson},
      {"trim",
       [](const std::string& n, const Value& v, CallArgs& a) {
         auto p = bind_args(n, a, {{"chars", Value(None{})}});
         return Value(py::strip(to_str(v), opt_str_arg(n, p[0]), true, true));
       }},
      {"unique", &do_unique},
  };
  return filters;
}

std::string canonical(const std::string& name) {
  if (name == "d") return "default";
  if (name == "e") return "escape";
  if (name == "count") return "length";
  return name;
}

}  // namespace

bool has_filter(const std::string& name) { return registry().count(canonical(name)) != 0; }

Value apply_filter(const std::string& name, const Value& v, CallArgs& args) {
  auto it = registry().find(canonical(name));
  if (it == registry().end()) throw EvalError("No filter named '" + name + "'.");
  return it->second(name, v, args);
}

}  // namespace qtrain::jinja
