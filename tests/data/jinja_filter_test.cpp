// Filters and tests with jinja2's definitions and transformers' tojson.
// Expected outputs were produced by transformers 5.23's jinja2 environment (chat_template_utils._compile_jinja_template)
// on the same template and variables; "ERR" rows are templates jinja2 refuses.
#include <gtest/gtest.h>

#include "tests/data/jinja_test_util.h"

namespace qtrain::jinja {
namespace {

const JinjaCase kCases[] = {
    {R"J({{ l | length }} {{ l | first }} {{ l | last }} {{ l | join('-') }} {{ l | reverse | list }} {{ l | sort | list }} {{ l | unique | list }} {{ l | max }} {{ l | min }} {{ l | sum }})J",
     R"J({"l": [3, 1, 2, 3]})J",
     R"J(4 3 3 3-1-2-3 [3, 2, 1, 3] [1, 2, 3, 3] [3, 1, 2] 3 1 9)J"},
    {R"J({{ '  x  ' | trim }}|{{ 'a\nb' | indent(2) }}|{{ 'a\nb\n\nc' | indent(2, true) }}|{{ 'a\n\nb' | indent(2, blank=true) }}|{{ x | default('dflt') }}|{{ '' | default('e', true) }}|{{ 3.14159 | round(2) }}|{{ 2.5 | round }}|{{ 'x' | string }}|{{ '12' | int + 1 }}|{{ 'z' | int }}|{{ '1.5' | float }})J",
     R"J({})J",
     R"J(x|a
  b|  a
  b

  c|a
  
  b|dflt|e|3.14|2.0|x|13|0|1.5)J"},
    {R"J({{ ms | selectattr('role', 'equalto', 'user') | map(attribute='c') | join(',') }}|{{ ms | rejectattr('role', 'eq', 'user') | list | length }}|{{ [1, 2, 3, 4] | select('odd') | list }}|{{ [1, 2, 3] | reject('even') | list }}|{{ ['a', 'B'] | map('upper') | list }}|{{ ms | map(attribute='role') | unique | list }})J",
     R"J({"ms": [{"role": "user", "c": "1"}, {"role": "assistant", "c": "2"}, {"role": "user", "c": "3"}]})J",
     R"J(1,3|1|[1, 3]|[1, 3]|['A', 'B']|['user', 'assistant'])J"},
    {R"J({{ d | tojson }}|{{ d | tojson(indent=2) }}|{{ 'é\n"<>&' | tojson }}|{{ [1.0, 2.5e-7, none, true] | tojson }}|{{ d | tojson(sort_keys=true) }}|{{ 'é' | tojson(ensure_ascii=true) }}|{{ {} | tojson(indent=2) }}|{{ d | tojson(separators=(',', ':')) }})J",
     R"J({"d": {"z": 1, "a": [1, {"b": "c"}], "e": {}}})J",
     R"J({"z": 1, "a": [1, {"b": "c"}], "e": {}}|{
  "z": 1,
  "a": [
    1,
    {
      "b": "c"
    }
  ],
  "e": {}
}|"é\n\"<>&"|[1.0, 2.5e-07, null, true]|{"a": [1, {"b": "c"}], "e": {}, "z": 1}|"\u00e9"|{}|{"z":1,"a":[1,{"b":"c"}],"e":{}})J"},
    {R"J({{ d | items | list }}|{{ d | dictsort }}|{{ 'x' is string }}{{ 1 is number }}{{ true is number }}{{ 1 is integer }}{{ true is integer }}{{ 1.0 is float }}{{ d is mapping }}{{ 'x' is iterable }}{{ none is none }}{{ false is false }}{{ 0 is false }}{{ x is defined }}{{ x is undefined }}{{ 4 is divisibleby 2 }}{{ 3 is odd }}{{ [] is sequence }}{{ 'a' is in 'abc' }})J",
     R"J({"d": {"b": 1, "a": 2}})J",
     R"J([('b', 1), ('a', 2)]|[('a', 2), ('b', 1)]|TrueTrueTrueTrueFalseTrueTrueTrueTrueTrueFalseFalseTrueTrueTrueTrueTrue)J"},
};

TEST(JinjaFilter, MatchesJinja2) {
  for (const auto& c : kCases) expect_render(c);
}

}  // namespace
}  // namespace qtrain::jinja
