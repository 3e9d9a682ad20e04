// Python's operators on template values, as jinja2 evaluates them (it compiles templates to Python):
// arithmetic with int/float promotion (bool counts as int), + on str/list, * repetition, true and
// floor division, Python's modulo sign, ordering of numbers/str/lists, `in`, and jinja2's attribute
// and item lookup (obj.x tries the attribute, then the key; obj[k] the key, then the attribute) with
// undefined results that carry the reason. Failures are EvalError with Python's message.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "data/jinja/value.h"

namespace qtrain::jinja {

Value binary_op(const std::string& op, const Value& a, const Value& b);  // + - * / // % ** ~
bool compare_op(const std::string& op, const Value& a, const Value& b);  // == != < <= > >= in, not in
Value negate(const Value& a);
Value positive(const Value& a);

// The error an undefined value raises when used (UndefinedError's message).
[[noreturn]] void fail_undefined(const Value& u);

Value get_attr(const Value& obj, const std::string& name);
Value get_item(const Value& obj, const Value& key);
Value slice(const Value& obj, const Value& start, const Value& stop, const Value& step);
// The items iteration yields: list items, dict keys, string code points; undefined iterates as empty.
std::vector<Value> iterate(const Value& v);
// len(): code points, items, keys; undefined has length 0.
int64_t length_of(const Value& v);
// sorted()'s order: numbers, strings (code point order), lists; anything else is a TypeError.
bool less_than(const Value& a, const Value& b);

}  // namespace qtrain::jinja
