#include "data/jinja/tests.h"

#include <map>

#include "data/jinja/args.h"
#include "data/jinja/operators.h"
#include "data/jinja/py_string.h"

namespace qtrain::jinja {
namespace {

using TestFn = bool (*)(const std::string& name, const Value& v, CallArgs& args);

bool no_args(const std::string& name, CallArgs& args) {
  bind_args(name, args, {});
  return true;
}

Value one_arg(const std::string& name, CallArgs& args) { return bind_args(name, args, {{"other", std::nullopt}})[0]; }

const std::map<std::string, TestFn>& registry() {
  static const std::map<std::string, TestFn> tests = {
      {"defined", [](const std::string& n, const Value& v, CallArgs& a) { return no_args(n, a) && !v.is_undefined(); }},
      {"undefined", [](const std::string& n, const Value& v, CallArgs& a) { return no_args(n, a) && v.is_undefined(); }},
      {"none", [](const std::string& n, const Value& v, CallArgs& a) { return no_args(n, a) && v.is_none(); }},
      {"boolean", [](const std::string& n, const Value& v, CallArgs& a) { return no_args(n, a) && v.is_bool(); }},
      {"false", [](const std::string& n, const Value& v, CallArgs& a) { return no_args(n, a) && v.is_bool() && !v.as_bool(); }},
      {"true", [](const std::string& n, const Value& v, CallArgs& a) { return no_args(n, a) && v.is_bool() && v.as_bool(); }},
      {"integer", [](const std::string& n, const Value& v, CallArgs& a) { return no_args(n, a) && v.is_int(); }},
      {"float", [](const std::string& n, const Value& v, CallArgs& a) { return no_args(n, a) && v.is_float(); }},
      {"number", [](const std::string& n, const Value& v, CallArgs& a) { return no_args(n, a) && v.is_number(); }},
      {"string", [](const std::string& n, const Value& v, CallArgs& a) { return no_args(n, a) && v.is_string(); }},
      {"mapping", [](const std::string& n, const Value& v, CallArgs& a) { return no_args(n, a) && v.is_dict() && !v.as_dict()->is_namespace; }},
      {"iterable",
       [](const std::string& n, const Value& v, CallArgs& a) {
         return no_args(n, a) && (v.is_undefined() || v.is_string() || v.is_list() || (v.is_dict() && !v.as_dict()->is_namespace));
       }},
      {"sequence",
       [](const std::string& n, const Value& v, CallArgs& a) {
         return no_args(n, a) && (v.is_undefined() || v.is_string() || v.is_list() || (v.is_dict() && !v.as_dict()->is_namespace));
       }},
      {"callable", [](const std::string& n, const Value& v, CallArgs& a) { return no_args(n, a) && v.is_callable(); }},
      {"lower", [](const std::string& n, const Value& v, CallArgs& a) { return no_args(n, a) && py::is_lower(to_str(v)); }},
      {"upper", [](const std::string& n, const Value& v, CallArgs& a) { return no_args(n, a) && py::is_upper(to_str(v)); }},
      {"even",
       [](const std::string& n, const Value& v, CallArgs& a) {
         no_args(n, a);
         return int_arg("even", v) % 2 == 0;
       }},
      {"odd",
       [](const std::string& n, const Value& v, CallArgs& a) {
         no_args(n, a);
         return int_arg("odd", v) % 2 != 0;
       }},
      {"divisibleby",
       [](const std::string& n, const Value& v, CallArgs& a) {
         const Value d = bind_args(n, a, {{"num", std::nullopt}})[0];
         return equals(binary_op("%", v, d), Value(int64_t{0}));
       }},
      {"sameas",
       [](const std::string& n, const Value& v, CallArgs& a) {
         const Value o = one_arg(n, a);
         if (v.is_none() || v.is_bool() || o.is_none() || o.is_bool()) return type_name(v) == type_name(o) && equals(v, o);
         if (v.is_list() && o.is_list()) return v.as_list() == o.as_list();
         if (v.is_dict() && o.is_dict()) return v.as_dict() == o.as_dict();
         return type_name(v) == type_name(o) && equals(v, o);
       }},
      {"in", [](const std::string& n, const Value& v, CallArgs& a) { return compare_op("in", v, bind_args(n, a, {{"seq", std::nullopt}})[0]); }},
      {"eq", [](const std::string& n, const Value& v, CallArgs& a) { return compare_op("==", v, one_arg(n, a)); }},
      {"ne", [](const std::string& n, const Value& v, CallArgs& a) { return compare_op("!=", v, one_arg(n, a)); }},
      {"lt", [](const std::string& n, const Value& v, CallArgs& a) { return compare_op("<", v, one_arg(n, a)); }},
      {"le", [](const std::string& n, const Value& v, CallArgs& a) { return compare_op("<=", v, one_arg(n, a)); }},
      {"gt", [](const std::string& n, const Value& v, CallArgs& a) { return compare_op(">", v, one_arg(n, a)); }},
      {"ge", [](const std::string& n, const Value& v, CallArgs& a) { return compare_op(">=", v, one_arg(n, a)); }},
  };
  return tests;
}

const std::map<std::string, std::string>& aliases() {
  static const std::map<std::string, std::string> a = {{"==", "eq"}, {"equalto", "eq"}, {"!=", "ne"}, {"<", "lt"},
                                                       {"lessthan", "lt"}, {"<=", "le"}, {">", "gt"}, {"greaterthan", "gt"},
                                                       {">=", "ge"}};
  return a;
}

std::string canonical(const std::string& name) {
  auto it = aliases().find(name);
  return it == aliases().end() ? name : it->second;
}

}  // namespace

bool has_test(const std::string& name) { return registry().count(canonical(name)) != 0; }

bool apply_test(const std::string& name, const Value& v, CallArgs& args) {
  auto it = registry().find(canonical(name));
  if (it == registry().end()) throw EvalError("No test named '" + name + "'.");
  return it->second(name, v, args);
}

}  // namespace qtrain::jinja
