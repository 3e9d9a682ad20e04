#include "data/jinja/template.h"

#include <cstdio>

#include "data/jinja/args.h"
#include "data/jinja/operators.h"
#include "data/jinja/parser.h"

namespace qtrain::jinja {
namespace {

bool uses_generation(const Body& body) {
  for (const auto& n : body) {
    if (n->kind == Node::Kind::kGeneration) return true;
    if (uses_generation(n->body) || uses_generation(n->else_body)) return true;
    for (const auto& b : n->bodies)
      if (uses_generation(b)) return true;
  }
  return false;
}

// jinja2's sandbox refuses larger ranges (MAX_RANGE).
constexpr int64_t kMaxRange = 100000;

Value range_fn(Interpreter&, CallArgs& a) {
  if (!a.keyword.empty()) throw EvalError("range() takes no keyword arguments");
  int64_t start = 0, stop = 0, step = 1;
  const auto& p = a.positional;
  if (p.size() == 1) stop = int_arg("range", p[0]);
  else if (p.size() == 2 || p.size() == 3) {
    start = int_arg("range", p[0]);
    stop = int_arg("range", p[1]);
    if (p.size() == 3) step = int_arg("range", p[2]);
  } else {
    throw EvalError("range expected 1 to 3 arguments, got " + std::to_string(p.size()));
  }
  if (step == 0) throw EvalError("range() arg 3 must not be zero");
  std::vector<Value> out;
  for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
    if (static_cast<int64_t>(out.size()) >= kMaxRange)
      throw EvalError("Range too big. The sandbox blocks ranges larger than MAX_RANGE (100000).");
    out.emplace_back(i);
  }
  return Value::list(std::move(out));
}

Value dict_fn(Interpreter&, CallArgs& a) {
  auto d = std::make_shared<Dict>();
  if (a.positional.size() > 1) throw EvalError("dict expected at most 1 argument");
  if (!a.positional.empty()) {
    const Value& src = a.positional[0];
    if (src.is_dict()) {
      d->items = src.as_dict()->items;
    } else {
      for (const auto& pair : iterate(src)) {
        const auto kv = iterate(pair);
        if (kv.size() != 2 || !kv[0].is_string()) throw EvalError("dict(): expected (str, value) pairs");
        d->set(kv[0].as_string(), kv[1]);
      }
    }
  }
  for (auto& [k, v] : a.keyword) d->set(k, v);
  return Value(std::move(d));
}

Value namespace_fn(Interpreter& in, CallArgs& a) {
  Value d = dict_fn(in, a);
  for (const auto& [k, _] : d.as_dict()->items)
    if (!k.empty() && k[0] == '_')
      throw EvalError("Chat templates cannot store underscore-prefixed attributes on a namespace, but got '" + k + "'");
  d.as_dict()->is_namespace = true;
  in.track_namespace(d.as_dict());
  return d;
}

}  // namespace

Template::Template(const std::string& source, std::string where) : where_(std::move(where)), lexed_(lex(source, where_)) {
  body_ = parse(lexed_, where_);
  has_generation_ = uses_generation(body_);
}

RenderResult Template::render(const Dict& vars, const std::tm& now, uint64_t max_steps) const {
  auto globals = std::make_shared<Dict>();
  globals->set("range", Value::function("range", &range_fn));
  globals->set("dict", Value::function("dict", &dict_fn));
  globals->set("namespace", Value::function("namespace", &namespace_fn));
  globals->set("raise_exception", Value::function("raise_exception", [](Interpreter&, CallArgs& a) -> Value {
    auto p = bind_args("raise_exception", a, {{"message", std::nullopt}});
    throw RaiseRequest{to_str(p[0])};
  }));
  globals->set("strftime_now", Value::function("strftime_now", [now](Interpreter&, CallArgs& a) {
    auto p = bind_args("strftime_now", a, {{"format", std::nullopt}});
    const std::string& fmt = str_arg("strftime_now", p[0]);
    if (fmt.empty()) return Value("");
    std::string buf(256 + fmt.size() * 8, '\0');
    const size_t n = std::strftime(buf.data(), buf.size(), fmt.c_str(), &now);
    if (n == 0) throw EvalError("strftime_now: format too long or empty result: " + fmt);
    buf.resize(n);
    return Value(buf);
  }));
  for (const auto& [k, v] : vars.items) globals->set(k, v);
  RenderResult r;
  Interpreter in(lexed_, where_, max_steps);
  r.text = in.render(body_, globals, &r.generation);
  return r;
}

std::tm parse_timestamp(const std::string& text, const std::string& what) {
  std::tm t{};
  int y, mo, d, h = 0, mi = 0, s = 0;
  char tail;
  const int n = std::sscanf(text.c_str(), "%4d-%2d-%2dT%2d:%2d:%2d%c", &y, &mo, &d, &h, &mi, &s, &tail);
  const int n_date = std::sscanf(text.c_str(), "%4d-%2d-%2d%c", &y, &mo, &d, &tail);
  if (!(n == 6 || (n_date == 3 && text.size() == 10)) || mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || s > 60)
    throw UsageError(what + ": expected a time like 2025-03-14T09:26:53 (or a date 2025-03-14), got '" + text + "'");
  if (n != 6) h = mi = s = 0;
  t.tm_year = y - 1900;
  t.tm_mon = mo - 1;
  t.tm_mday = d;
  t.tm_hour = h;
  t.tm_min = mi;
  t.tm_sec = s;
  t.tm_isdst = -1;
  std::tm copy = t;
  timegm(&copy);  // fills the weekday and day of the year (%a, %j)
  t.tm_wday = copy.tm_wday;
  t.tm_yday = copy.tm_yday;
  return t;
}

std::string format_timestamp(const std::tm& t) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d", t.tm_year + 1900, t.tm_mon + 1, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec);
  return buf;
}

}  // namespace qtrain::jinja
