#include "data/jinja/operators.h"

#include <cmath>

#include "data/jinja/error.h"
#include "data/jinja/methods.h"
#include "data/jinja/py_string.h"

namespace qtrain::jinja {
namespace {

bool int_like(const Value& v) { return v.is_int() || v.is_bool(); }
int64_t int_of(const Value& v) { return v.is_bool() ? int64_t{v.as_bool()} : v.as_int(); }

[[noreturn]] void unsupported(const std::string& op, const Value& a, const Value& b) {
  throw EvalError("unsupported operand type(s) for " + op + ": '" + type_name(a) + "' and '" + type_name(b) + "'");
}

int64_t checked(__int128 r) {
  if (r > INT64_MAX || r < INT64_MIN) throw EvalError("integer overflow (beyond 64 bits)");
  return static_cast<int64_t>(r);
}

Value repeat(const Value& seq, int64_t n) {
  if (seq.is_string()) {
    std::string out;
    for (int64_t i = 0; i < n; ++i) out += seq.as_string();
    return Value(std::move(out));
  }
  std::vector<Value> items;
  for (int64_t i = 0; i < n; ++i)
    for (const auto& x : seq.as_list()->items) items.push_back(x);
  return Value::list(std::move(items), seq.as_list()->tuple);
}

std::string object_type(const Value& v) {
  if (v.is_none()) return "None";
  return "'" + type_name(v) + " object'";
}

// Python index normalisation: negative counts from the end; nullopt when out of range.
std::optional<size_t> index_in(int64_t i, size_t n) {
  if (i < 0) i += static_cast<int64_t>(n);
  if (i < 0 || i >= static_cast<int64_t>(n)) return std::nullopt;
  return static_cast<size_t>(i);
}

}  // namespace

void fail_undefined(const Value& u) { throw EvalError(u.as_undefined().hint.empty() ? "undefined value" : u.as_undefined().hint); }

Value binary_op(const std::string& op, const Value& a, const Value& b) {
  if (op == "~") return Value(to_str(a) + to_str(b));
  if (a.is_undefined()) fail_undefined(a);
  if (b.is_undefined()) fail_undefined(b);
  const bool nums = a.is_number() && b.is_number();
  const bool ints = int_like(a) && int_like(b);
  if (op == "+") {
    if (ints) return Value(checked(static_cast<__int128>(int_of(a)) + int_of(b)));
    if (nums) return Value(a.to_double() + b.to_double());
    if (a.is_string() && b.is_string()) return Value(a.as_string() + b.as_string());
    if (a.is_list() && b.is_list() && a.as_list()->tuple == b.as_list()->tuple) {
      std::vector<Value> items = a.as_list()->items;
      items.insert(items.end(), b.as_list()->items.begin(), b.as_list()->items.end());
      return Value::list(std::move(items), a.as_list()->tuple);
    }
    if (a.is_string() && !b.is_string()) throw EvalError("can only concatenate str (not \"" + type_name(b) + "\") to str");
    if (a.is_list() && !a.as_list()->tuple) throw EvalError("can only concatenate list (not \"" + type_name(b) + "\") to list");
    unsupported("+", a, b);
  }
  if (op == "-") {
    if (ints) return Value(checked(static_cast<__int128>(int_of(a)) - int_of(b)));
    if (nums) return Value(a.to_double() - b.to_double());
    unsupported("-", a, b);
  }
  if (op == "*") {
    if (ints) return Value(checked(static_cast<__int128>(int_of(a)) * int_of(b)));
    if (nums) return Value(a.to_double() * b.to_double());
    if ((a.is_string() || a.is_list()) && int_like(b)) return repeat(a, int_of(b));
    if ((b.is_string() || b.is_list()) && int_like(a)) return repeat(b, int_of(a));
    unsupported("*", a, b);
  }
  if (op == "/") {
    if (!nums) unsupported("/", a, b);
    if (b.to_double() == 0) throw EvalError("division by zero");
    return Value(a.to_double() / b.to_double());
  }
  if (op == "//" || op == "%") {
    if (!nums) {
      if (op == "%" && a.is_string()) throw EvalError("printf-style '%' string formatting is not supported");
      unsupported(op, a, b);
    }
    if (ints) {
      const int64_t x = int_of(a), y = int_of(b);
      if (y == 0) throw EvalError(op == "//" ? "integer division or modulo by zero" : "integer modulo by zero");
      int64_t q = x / y, r = x % y;
      if (r != 0 && ((r < 0) != (y < 0))) --q, r += y;  // Python floors
      return op == "//" ? Value(q) : Value(r);
    }
    const double x = a.to_double(), y = b.to_double();
    if (y == 0) throw EvalError("float division by zero");
    if (op == "//") return Value(std::floor(x / y));
    double r = std::fmod(x, y);
    if (r != 0 && ((r < 0) != (y < 0))) r += y;
    return Value(r);
  }
  if (op == "**") {
    if (!nums) unsupported("** or pow()", a, b);
    if (ints && int_of(b) >= 0) {
      __int128 r = 1;
      for (int64_t i = 0; i < int_of(b); ++i) {
        r *= int_of(a);
        checked(r);
      }
      return Value(static_cast<int64_t>(r));
    }
    return Value(std::pow(a.to_double(), b.to_double()));
  }
  throw EvalError("unknown operator " + op);
}

bool less_than(const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) {
    if (int_like(a) && int_like(b)) return int_of(a) < int_of(b);
    return a.to_double() < b.to_double();
  }
  if (a.is_string() && b.is_string()) return a.as_string() < b.as_string();  // UTF-8 byte order == code point order
  if (a.is_list() && b.is_list()) {
    const auto& x = a.as_list()->items;
    const auto& y = b.as_list()->items;
    for (size_t i = 0; i < x.size() && i < y.size(); ++i) {
      if (equals(x[i], y[i])) continue;
      return less_than(x[i], y[i]);
    }
    return x.size() < y.size();
  }
  if (a.is_undefined()) fail_undefined(a);
  if (b.is_undefined()) fail_undefined(b);
  throw EvalError("'<' not supported between instances of '" + type_name(a) + "' and '" + type_name(b) + "'");
}

bool compare_op(const std::string& op, const Value& a, const Value& b) {
  if (op == "==") return equals(a, b);
  if (op == "!=") return !equals(a, b);
  if (op == "<") return less_than(a, b);
  if (op == ">") return less_than(b, a);
  if (op == "<=") return less_than(a, b) || equals(a, b);
  if (op == ">=") return less_than(b, a) || equals(a, b);
  if (op == "in" || op == "not in") {
    bool found = false;
    if (b.is_string()) {
      if (!a.is_string()) throw EvalError("'in <string>' requires string as left operand, not " + type_name(a));
      found = b.as_string().find(a.as_string()) != std::string::npos;
    } else if (b.is_list()) {
      for (const auto& x : b.as_list()->items)
        if (equals(x, a)) { found = true; break; }
    } else if (b.is_dict() && !b.as_dict()->is_namespace) {
      found = a.is_string() && b.as_dict()->find(a.as_string()) != nullptr;
    } else if (b.is_undefined()) {
      found = false;
    } else {
      throw EvalError("argument of type '" + type_name(b) + "' is not iterable");
    }
    return op == "in" ? found : !found;
  }
  throw EvalError("unknown comparison " + op);
}

Value negate(const Value& a) {
  if (a.is_undefined()) fail_undefined(a);
  if (int_like(a)) return Value(checked(-static_cast<__int128>(int_of(a))));
  if (a.is_float()) return Value(-a.as_float());
  throw EvalError("bad operand type for unary -: '" + type_name(a) + "'");
}

Value positive(const Value& a) {
  if (a.is_undefined()) fail_undefined(a);
  if (int_like(a)) return Value(int_of(a));
  if (a.is_float()) return a;
  throw EvalError("bad operand type for unary +: '" + type_name(a) + "'");
}

Value get_attr(const Value& obj, const std::string& name) {
  if (obj.is_undefined()) fail_undefined(obj);
  if (std::optional<Value> m = bound_method(obj, name)) return *m;
  if (obj.is_dict()) {
    if (const Value* v = obj.as_dict()->find(name)) return *v;
  }
  return Value(Undefined{object_type(obj) + " has no attribute '" + name + "'"});
}

Value get_item(const Value& obj, const Value& key) {
  if (obj.is_undefined()) fail_undefined(obj);
  if (obj.is_dict() && key.is_string()) {
    if (const Value* v = obj.as_dict()->find(key.as_string())) return *v;
  } else if ((obj.is_list() || obj.is_string()) && (key.is_int() || key.is_bool())) {
    const int64_t i = key.is_bool() ? int64_t{key.as_bool()} : key.as_int();
    if (obj.is_list()) {
      if (auto k = index_in(i, obj.as_list()->items.size())) return obj.as_list()->items[*k];
    } else {
      const auto cps = py::decode(obj.as_string());
      if (auto k = index_in(i, cps.size())) return Value(py::encode(cps, *k, *k + 1));
    }
    return Value(Undefined{object_type(obj) + " has no element " + to_repr(key)});
  }
  if (key.is_string()) return get_attr(obj, key.as_string());
  return Value(Undefined{object_type(obj) + " has no element " + to_repr(key)});
}

Value slice(const Value& obj, const Value& start, const Value& stop, const Value& step) {
  if (obj.is_undefined()) fail_undefined(obj);
  auto as_index = [](const Value& v, const char* what) -> std::optional<int64_t> {
    if (v.is_none() || v.is_undefined()) return std::nullopt;
    if (v.is_int()) return v.as_int();
    if (v.is_bool()) return int64_t{v.as_bool()};
    throw EvalError(std::string("slice ") + what + " must be an integer or None");
  };
  const int64_t st = as_index(step, "step").value_or(1);
  if (st == 0) throw EvalError("slice step cannot be zero");
  std::vector<char32_t> cps;
  size_t n;
  if (obj.is_string()) cps = py::decode(obj.as_string()), n = cps.size();
  else if (obj.is_list()) n = obj.as_list()->items.size();
  else throw EvalError("'" + type_name(obj) + "' object is not subscriptable");
  // CPython's PySlice_AdjustIndices.
  const int64_t len = static_cast<int64_t>(n);
  auto adjust = [&](std::optional<int64_t> v, int64_t dflt) {
    if (!v) return dflt;
    int64_t x = *v;
    if (x < 0) {
      x += len;
      if (x < 0) x = st < 0 ? -1 : 0;
    } else if (x >= len) {
      x = st < 0 ? len - 1 : len;
    }
    return x;
  };
  const int64_t b = adjust(as_index(start, "start"), st < 0 ? len - 1 : 0);
  const int64_t e = adjust(as_index(stop, "stop"), st < 0 ? -1 : len);
  std::vector<size_t> picks;
  if (st > 0) for (int64_t i = b; i < e; i += st) picks.push_back(static_cast<size_t>(i));
  else for (int64_t i = b; i > e; i += st) picks.push_back(static_cast<size_t>(i));
  if (obj.is_string()) {
    std::vector<char32_t> out;
    for (size_t i : picks) out.push_back(cps[i]);
    return Value(py::encode(out, 0, out.size()));
  }
  std::vector<Value> items;
  for (size_t i : picks) items.push_back(obj.as_list()->items[i]);
  return Value::list(std::move(items), obj.as_list()->tuple);
}

std::vector<Value> iterate(const Value& v) {
  if (v.is_undefined()) return {};
  if (v.is_list()) return v.as_list()->items;
  if (v.is_dict() && !v.as_dict()->is_namespace) {
    std::vector<Value> keys;
    for (const auto& [k, _] : v.as_dict()->items) keys.emplace_back(k);
    return keys;
  }
  if (v.is_string()) {
    const auto cps = py::decode(v.as_string());
    std::vector<Value> out;
    for (size_t i = 0; i < cps.size(); ++i) out.emplace_back(py::encode(cps, i, i + 1));
    return out;
  }
  throw EvalError("'" + type_name(v) + "' object is not iterable");
}

int64_t length_of(const Value& v) {
  if (v.is_undefined()) return 0;
  if (v.is_string()) return static_cast<int64_t>(py::length(v.as_string()));
  if (v.is_list()) return static_cast<int64_t>(v.as_list()->items.size());
  if (v.is_dict() && !v.as_dict()->is_namespace) return static_cast<int64_t>(v.as_dict()->items.size());
  throw EvalError("object of type '" + type_name(v) + "' has no len()");
}

}  // namespace qtrain::jinja
