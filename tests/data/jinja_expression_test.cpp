// Expressions: literals, precedence, Python arithmetic and comparisons, subscripts and slices by code point, attribute lookup, str/dict methods, undefined values.
// Expected outputs were produced by transformers 5.23's jinja2 environment (chat_template_utils._compile_jinja_template)
// on the same template and variables; "ERR" rows are templates jinja2 refuses.
#include <gtest/gtest.h>

#include "tests/data/jinja_test_util.h"

namespace qtrain::jinja {
namespace {

const JinjaCase kCases[] = {
    {R"J({{ 1 + 2 * 3 }} {{ (1 + 2) * 3 }} {{ 2 ** 3 ** 2 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % -3 }} {{ 7 / 2 }} {{ 1 ~ 2 }})J",
     R"J({})J",
     R"J(7 9 64 3 -4 -2 3.5 12)J"},
    {R"J({{ 'a' 'b' }} {{ "\u00e9\n" }} {{ 'x\'y' }} {{ 1_000 }} {{ 0x1F }} {{ 1.5e3 }} {{ 1e-5 }} {{ 1/3 }} {{ 1e16 }} {{ 123456789012345678.0 }})J",
     R"J({})J",
     R"J(ab é
 x'y 1000 31 1500.0 1e-05 0.3333333333333333 1e+16 1.2345678901234568e+17)J"},
    {R"J({{ [1, 'a', none, true, 2.0] }} {{ {'k': [1, (2,)], 'q': "it's"} }} {{ (1,) }} {{ () }})J",
     R"J({})J",
     R"J([1, 'a', None, True, 2.0] {'k': [1, (2,)], 'q': "it's"} (1,) ())J"},
    {R"J({{ 1 < 2 < 3 }} {{ 3 > 2 > 2 }} {{ 'a' in 'cat' }} {{ 2 not in [1, 3] }} {{ 'k' in {'k': 1} }} {{ 1 == 1.0 }} {{ true == 1 }})J",
     R"J({})J",
     R"J(True False True True True True True)J"},
    {R"J({{ x and y }}|{{ x or 'd' }}|{{ not x }}|{{ 'y' if x else 'n' }}|{{ 'y' if x }}|)J",
     R"J({"x": 0, "y": 5})J",
     R"J(0|d|True|n||)J"},
    {R"J({{ s[1:3] }} {{ s[::-1] }} {{ s[-2:] }} {{ l[1] }} {{ l[-1] }} {{ l[10] }}|{{ s[0] }} {{ l[:-1] }} {{ s[::2] }})J",
     R"J({"s": "héllo", "l": [1, 2, 3]})J",
     R"J(él olléh lo 2 3 |h [1, 2] hlo)J"},
    {R"J({{ d.a }} {{ d['b'] }} {{ d.missing }}|{{ d.get('a') }} {{ d.get('z', 9) }} {{ d.items() | list }} {{ d.keys() | list }} {{ d.values() | list }})J",
     R"J({"d": {"a": 1, "b": "two"}})J",
     R"J(1 two |1 9 [('a', 1), ('b', 'two')] ['a', 'b'] [1, 'two'])J"},
    {R"J({{ s.strip() }}|{{ s.lstrip() }}|{{ s.rstrip() }}|{{ s.strip(' x') }}|{{ s.split() }}|{{ 'a,b,,c'.split(',') }}|{{ 'a b c'.split(' ', 1) }}|{{ 'a,b,c'.rsplit(',', 1) }})J",
     R"J({"s": "  x hi there  "})J",
     R"J(x hi there|x hi there  |  x hi there|hi there|['x', 'hi', 'there']|['a', 'b', '', 'c']|['a', 'b c']|['a,b', 'c'])J"},
    {R"J({{ 'Hello'.upper() }} {{ 'Hello'.lower() }} {{ 'hello world'.title() }} {{ 'hELLO'.capitalize() }} {{ 'abc'.startswith('ab') }} {{ 'abc'.endswith(('x', 'c')) }} {{ 'aaa'.replace('a', 'b', 2) }} {{ 'abcabc'.find('c') }} {{ 'abc'.count('') }})J",
     R"J({})J",
     R"J(HELLO hello Hello World Hello True True bba 2 4)J"},
    {R"J({{ dict(a=1, b='x') }} {{ range(3) | list }} {{ range(1, 7, 2) | list }} {{ namespace(a=1).a }})J",
     R"J({})J",
     R"J({'a': 1, 'b': 'x'} [0, 1, 2] [1, 3, 5] 1)J"},
    {R"J({{ m.content is mapping or m.content is iterable }}{{ m.x is not defined }})J",
     R"J({"m": {"content": "s"}})J",
     R"J(TrueTrue)J"},
    {R"J({{ x }}{{ x | length }}{{ x | trim }}{% for i in x %}n{% endfor %}{{ x | default('d') }}{{ 'a' ~ x ~ 'b' }}{{ x is none }})J",
     R"J({})J",
     R"J(0dabFalse)J"},
    {R"J({{ 10 ** 2 }} {{ 2 ** -1 }} {{ -3 | abs }} {{ 1.5 | int }} {{ -2.5 | round }} {{ 0.125 | round(2) }} {{ 1e300 * 1e10 }} {{ 3 * 'ab' }} {{ [0] * 2 }})J",
     R"J({})J",
     R"J(100 0.5 3 1 -2.0 0.12 inf ababab [0, 0])J"},
};

TEST(JinjaExpression, MatchesJinja2) {
  for (const auto& c : kCases) expect_render(c);
}

}  // namespace
}  // namespace qtrain::jinja
