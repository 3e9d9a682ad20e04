// The values a chat template computes with, modelled on the Python objects jinja2 hands a template:
// undefined (jinja2's default Undefined: renders as "", is falsy and iterates as empty, but fails on
// attribute access, calls and arithmetic), None, bool, int, float, str (UTF-8 here, indexed by code
// point like Python), list / tuple, dict (insertion-ordered, string keys: JSON data), namespace and
// callables. Lists and dicts are shared by reference, as in Python, so `ns.x = ...` is seen by
// everyone holding the namespace.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <variant>
#include <vector>

namespace qtrain::jinja {

class Value;
class Interpreter;

struct Undefined {
  std::string hint;  // why it is undefined, for the error when it is used: "'x' is undefined"
};
struct None {};

struct List {
  std::vector<Value> items;
  bool tuple = false;  // a Python tuple: (1, 2) when printed, [1, 2] in JSON
};

struct Dict {
  std::vector<std::pair<std::string, Value>> items;  // insertion order, as Python 3.7+ dicts
  bool is_namespace = false;                          // namespace(): the only object `set a.b = ...` may write
  const Value* find(std::string_view key) const;
  Value* find(std::string_view key);
  void set(std::string key, Value v);  // replaces an existing key in place (order kept), or appends
};

// Positional and keyword arguments of a call, as jinja2 passes them.
struct CallArgs {
  std::vector<Value> positional;
  std::vector<std::pair<std::string, Value>> keyword;
};

struct Callable {
  std::string name;  // for messages: "raise_exception", "macro 'render'", "method str.strip"
  std::function<Value(Interpreter&, CallArgs&)> fn;
};

using ListPtr = std::shared_ptr<List>;
using DictPtr = std::shared_ptr<Dict>;
using CallablePtr = std::shared_ptr<const Callable>;

class Value {
 public:
  using Storage = std::variant<Undefined, None, bool, int64_t, double, std::string, ListPtr, DictPtr, CallablePtr>;

  Value() : v_(Undefined{}) {}
  Value(None) : v_(None{}) {}
  Value(Undefined u) : v_(std::move(u)) {}
  Value(bool b) : v_(b) {}
  Value(int i) : v_(static_cast<int64_t>(i)) {}
  Value(int64_t i) : v_(i) {}
  Value(double d) : v_(d) {}
  Value(std::string s) : v_(std::move(s)) {}
  Value(const char* s) : v_(std::string(s)) {}
  Value(ListPtr l) : v_(std::move(l)) {}
  Value(DictPtr d) : v_(std::move(d)) {}
  Value(CallablePtr c) : v_(std::move(c)) {}

  static Value list(std::vector<Value> items = {}, bool tuple = false);
  static Value dict(std::vector<std::pair<std::string, Value>> items = {});
  static Value function(std::string name, std::function<Value(Interpreter&, CallArgs&)> fn);

  bool is_undefined() const { return std::holds_alternative<Undefined>(v_); }
  bool is_none() const { return std::holds_alternative<None>(v_); }
  bool is_bool() const { return std::holds_alternative<bool>(v_); }
  bool is_int() const { return std::holds_alternative<int64_t>(v_); }  // not bool, unlike Python's isinstance
  bool is_float() const { return std::holds_alternative<double>(v_); }
  bool is_number() const { return is_int() || is_float() || is_bool(); }  // numbers.Number: bool included
  bool is_string() const { return std::holds_alternative<std::string>(v_); }
  bool is_list() const { return std::holds_alternative<ListPtr>(v_); }
  bool is_dict() const { return std::holds_alternative<DictPtr>(v_); }
  bool is_callable() const { return std::holds_alternative<CallablePtr>(v_); }

  bool as_bool() const { return std::get<bool>(v_); }
  int64_t as_int() const { return std::get<int64_t>(v_); }
  double as_float() const { return std::get<double>(v_); }
  const std::string& as_string() const { return std::get<std::string>(v_); }
  const ListPtr& as_list() const { return std::get<ListPtr>(v_); }
  const DictPtr& as_dict() const { return std::get<DictPtr>(v_); }
  const Callable& as_callable() const { return *std::get<CallablePtr>(v_); }
  const Undefined& as_undefined() const { return std::get<Undefined>(v_); }
  // int or bool as an integer (Python: True + 1 == 2); float as double.
  double to_double() const;

  const Storage& storage() const { return v_; }

 private:
  Storage v_;
};

// Python's type name, for messages: "str", "int", "dict", "NoneType", "Undefined".
std::string type_name(const Value& v);
// bool(v): empty containers and strings, 0, None and undefined are false.
bool truthy(const Value& v);
// str(v): None -> "None", True -> "True", floats as repr, containers as Python prints them, undefined -> "".
std::string to_str(const Value& v);
// repr(v): strings quoted and escaped as Python does.
std::string to_repr(const Value& v);
// Python ==: 1 == 1.0 == True, containers element-wise; undefined equals only undefined.
bool equals(const Value& a, const Value& b);
// Python float repr: shortest round-trip digits, "1.0", "1e+16", "inf", "nan".
std::string float_repr(double d);

}  // namespace qtrain::jinja
