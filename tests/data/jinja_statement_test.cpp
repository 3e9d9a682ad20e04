// Statements: for (loop object, filter, else, unpacking, break/continue), set scoping and namespace, block set, macro, call, filter and with blocks.
// Expected outputs were produced by transformers 5.23's jinja2 environment (chat_template_utils._compile_jinja_template)
// on the same template and variables; "ERR" rows are templates jinja2 refuses.
#include <gtest/gtest.h>

#include "tests/data/jinja_test_util.h"

namespace qtrain::jinja {
namespace {

const JinjaCase kCases[] = {
    {R"J({% for x in l %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}{{ loop.revindex0 }}{{ loop.first }}{{ loop.last }}{{ loop.length }}{{ loop.previtem }}{{ loop.nextitem }}{{ loop.cycle('a', 'b') }};{% endfor %})J",
     R"J({"l": ["p", "q", "r"]})J",
     R"J(1032TrueFalse3qa;2121FalseFalse3prb;3210FalseTrue3qa;)J"},
    {R"J({% for x in l if x != 'q' %}{{ loop.index }}{{ x }}{{ loop.last }};{% else %}empty{% endfor %}|{% for x in [] %}no{% else %}empty{% endfor %})J",
     R"J({"l": ["p", "q", "r"]})J",
     R"J(1pFalse;2rTrue;|empty)J"},
    {R"J({% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}{% for k in d %}{{ k }}{% endfor %}{% for c in 'ab' %}[{{ c }}]{% endfor %})J",
     R"J({"d": {"a": 1, "b": 2}})J",
     R"J(a=1;b=2;ab[a][b])J"},
    {R"J({% for x in range(10) %}{% if x == 2 %}{% continue %}{% endif %}{% if x == 5 %}{% break %}{% endif %}{{ x }}{% endfor %})J",
     R"J({})J",
     R"J(0134)J"},
    {R"J({% set x = 1 %}{% for i in [1, 2] %}{% set x = x + i %}[{{ x }}]{% endfor %}{{ x }}{% set ns = namespace(t=0) %}{% for i in [1, 2] %}{% set ns.t = ns.t + i %}{% endfor %}{{ ns.t }})J",
     R"J({})J",
     R"J([2][3]13)J"},
    {R"J({% set a, b = 1, 2 %}{{ a }}{{ b }}{% set c %}  block {{ a }}  {% endset %}[{{ c }}]{% set d | trim | upper %}  x  {% endset %}[{{ d }}])J",
     R"J({})J",
     R"J(12[  block 1  ][X])J"},
    {R"J({% macro greet(name, punct='!') %}Hi {{ name }}{{ punct }}{% endmacro %}{{ greet('A') }} {{ greet('B', '?') }} {{ greet(name='C', punct='.') }})J",
     R"J({})J",
     R"J(Hi A! Hi B? Hi C.)J"},
    {R"J({% macro wrap(tag) %}<{{ tag }}>{{ caller() }}</{{ tag }}>{% endmacro %}{% call wrap('b') %}inner {{ 1 + 1 }}{% endcall %})J",
     R"J({})J",
     R"J(<b>inner 2</b>)J"},
    {R"J({% filter upper %}shout {{ 'it' }}{% endfilter %}|{% with a = 2, b = 3 %}{{ a * b }}{% endwith %}{{ a }})J",
     R"J({})J",
     R"J(SHOUT IT|6)J"},
};

TEST(JinjaStatement, MatchesJinja2) {
  for (const auto& c : kCases) expect_render(c);
}

}  // namespace
}  // namespace qtrain::jinja
