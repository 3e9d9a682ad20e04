#include "data/jinja/methods.h"

#include <set>

#include "data/jinja/args.h"
#include "data/jinja/operators.h"
#include "data/jinja/py_string.h"

namespace qtrain::jinja {
namespace {

using Method = std::function<Value(const Value& self, CallArgs& args)>;

Value bind_method(const Value& self, const std::string& qualified, Method m) {
  return Value::function(qualified, [self, m = std::move(m)](Interpreter&, CallArgs& args) { return m(self, args); });
}

// Python's str.startswith/endswith argument: a string or a tuple of strings.
bool affix_matches(const std::string& what, const Value& arg, const std::string& s, bool prefix) {
  auto one = [&](const std::string& a) {
    if (a.size() > s.size()) return false;
    return prefix ? s.compare(0, a.size(), a) == 0 : s.compare(s.size() - a.size(), a.size(), a) == 0;
  };
  if (arg.is_list()) {
    for (const auto& x : arg.as_list()->items)
      if (one(str_arg(what, x))) return true;
    return false;
  }
  return one(str_arg(what, arg));
}

std::optional<Value> str_method(const Value& self, const std::string& name) {
  const std::string q = "str." + name;
  auto strip_fn = [q](bool l, bool r) {
    return [q, l, r](const Value& s, CallArgs& a) {
      auto v = bind_args(q, a, {{"chars", Value(None{})}});
      return Value(py::strip(s.as_string(), opt_str_arg(q, v[0]), l, r));
    };
  };
  if (name == "strip") return bind_method(self, q, strip_fn(true, true));
  if (name == "lstrip") return bind_method(self, q, strip_fn(true, false));
  if (name == "rstrip") return bind_method(self, q, strip_fn(false, true));
  if (name == "split" || name == "rsplit") {
    const bool right = name == "rsplit";
    return bind_method(self, q, [q, right](const Value& s, CallArgs& a) {
      auto v = bind_args(q, a, {{"sep", Value(None{})}, {"maxsplit", Value(int64_t{-1})}});
      std::vector<Value> parts;
      for (auto& p : py::split(s.as_string(), opt_str_arg(q, v[0]), int_arg(q, v[1]), right)) parts.emplace_back(std::move(p));
      return Value::list(std::move(parts));
    });
  }
  if (name == "splitlines") {
    return bind_method(self, q, [q](const Value& s, CallArgs& a) {
      bind_args(q, a, {});
      std::vector<Value> lines;
      for (auto& l : py::splitlines(s.as_string())) lines.emplace_back(std::move(l));
      return Value::list(std::move(lines));
    });
  }
  if (name == "startswith" || name == "endswith") {
    const bool prefix = name == "startswith";
    return bind_method(self, q, [q, prefix](const Value& s, CallArgs& a) {
      auto v = bind_args(q, a, {{"prefix", std::nullopt}});
      return Value(affix_matches(q, v[0], s.as_string(), prefix));
    });
  }
  if (name == "upper") return bind_method(self, q, [q](const Value& s, CallArgs& a) { bind_args(q, a, {}); return Value(py::upper(s.as_string())); });
  if (name == "lower") return bind_method(self, q, [q](const Value& s, CallArgs& a) { bind_args(q, a, {}); return Value(py::lower(s.as_string())); });
  if (name == "title") return bind_method(self, q, [q](const Value& s, CallArgs& a) { bind_args(q, a, {}); return Value(py::title(s.as_string())); });
  if (name == "capitalize")
    return bind_method(self, q, [q](const Value& s, CallArgs& a) { bind_args(q, a, {}); return Value(py::capitalize(s.as_string())); });
  if (name == "isupper") return bind_method(self, q, [q](const Value& s, CallArgs& a) { bind_args(q, a, {}); return Value(py::is_upper(s.as_string())); });
  if (name == "islower") return bind_method(self, q, [q](const Value& s, CallArgs& a) { bind_args(q, a, {}); return Value(py::is_lower(s.as_string())); });
  if (name == "isspace") {
    return bind_method(self, q, [q](const Value& s, CallArgs& a) {
      bind_args(q, a, {});
      const auto cps = py::decode(s.as_string());
      bool all = !cps.empty();
      for (char32_t c : cps) all = all && py::is_space(c);
      return Value(all);
    });
  }
  if (name == "replace") {
    return bind_method(self, q, [q](const Value& s, CallArgs& a) {
      auto v = bind_args(q, a, {{"old", std::nullopt}, {"new", std::nullopt}, {"count", Value(int64_t{-1})}});
      return Value(py::replace(s.as_string(), str_arg(q, v[0]), str_arg(q, v[1]), int_arg(q, v[2])));
    });
  }
  if (name == "find" || name == "rfind" || name == "index" || name == "rindex" || name == "count") {
    return bind_method(self, q, [q, name](const Value& s, CallArgs& a) {
      auto v = bind_args(q, a, {{"sub", std::nullopt}});
      const std::string& hay = s.as_string();
      const std::string& sub = str_arg(q, v[0]);
      if (name == "count") {
        if (sub.empty()) return Value(static_cast<int64_t>(py::length(hay) + 1));
        int64_t n = 0;
        for (size_t k = hay.find(sub); k != std::string::npos; k = hay.find(sub, k + sub.size())) ++n;
        return Value(n);
      }
      const bool right = name == "rfind" || name == "rindex";
      const size_t k = right ? hay.rfind(sub) : hay.find(sub);
      if (k == std::string::npos) {
        if (name == "index" || name == "rindex") throw EvalError("substring not found");
        return Value(int64_t{-1});
      }
      return Value(static_cast<int64_t>(py::length(std::string_view(hay).substr(0, k))));
    });
  }
  if (name == "join") {
    return bind_method(self, q, [q](const Value& s, CallArgs& a) {
      auto v = bind_args(q, a, {{"iterable", std::nullopt}});
      std::string out;
      bool first = true;
      for (const auto& x : iterate(v[0])) {
        if (!first) out += s.as_string();
        first = false;
        out += str_arg(q, x);
      }
      return Value(std::move(out));
    });
  }
  return Value(Undefined{"'str object' has no attribute '" + name + "' (or qtrain does not implement str." + name + ")"});
}

}  // namespace

std::optional<Value> bound_method(const Value& obj, const std::string& name) {
  if (obj.is_string()) return str_method(obj, name);
  if (obj.is_dict() && !obj.as_dict()->is_namespace) {
    const std::string q = "dict." + name;
    if (name == "items" || name == "keys" || name == "values") {
      return bind_method(obj, q, [q, name](const Value& d, CallArgs& a) {
        bind_args(q, a, {});
        std::vector<Value> out;
        for (const auto& [k, v] : d.as_dict()->items) {
          if (name == "items") out.push_back(Value::list({Value(k), v}, true));
          else out.push_back(name == "keys" ? Value(k) : v);
        }
        return Value::list(std::move(out));
      });
    }
    if (name == "get") {
      return bind_method(obj, q, [q](const Value& d, CallArgs& a) {
        auto v = bind_args(q, a, {{"key", std::nullopt}, {"default", Value(None{})}});
        if (v[0].is_string())
          if (const Value* x = d.as_dict()->find(v[0].as_string())) return *x;
        return v[1];
      });
    }
    static const std::set<std::string> kMutating = {"pop", "popitem", "setdefault", "update", "clear"};
    if (kMutating.count(name)) return Value(Undefined{"access to attribute '" + name + "' of 'dict' object is unsafe."});
    return std::nullopt;
  }
  if (obj.is_list()) {
    const std::string q = std::string(obj.as_list()->tuple ? "tuple." : "list.") + name;
    if (name == "index" || name == "count") {
      return bind_method(obj, q, [q, name](const Value& l, CallArgs& a) {
        auto v = bind_args(q, a, {{"value", std::nullopt}});
        int64_t n = 0;
        for (size_t i = 0; i < l.as_list()->items.size(); ++i) {
          if (!equals(l.as_list()->items[i], v[0])) continue;
          if (name == "index") return Value(static_cast<int64_t>(i));
          ++n;
        }
        if (name == "index") throw EvalError(to_repr(v[0]) + " is not in list");
        return Value(n);
      });
    }
    static const std::set<std::string> kMutating = {"append", "extend", "insert", "pop", "remove", "reverse", "sort", "clear"};
    if (kMutating.count(name)) return Value(Undefined{"access to attribute '" + name + "' of '" + type_name(obj) + "' object is unsafe."});
    return Value(Undefined{"'" + type_name(obj) + " object' has no attribute '" + name + "'"});
  }
  return std::nullopt;
}

}  // namespace qtrain::jinja
