// Whitespace control as transformers configures jinja2: trim_blocks, lstrip_blocks, -/+ markers, raw, newline normalisation, the dropped trailing newline.
// Expected outputs were produced by transformers 5.23's jinja2 environment (chat_template_utils._compile_jinja_template)
// on the same template and variables; "ERR" rows are templates jinja2 refuses.
#include <gtest/gtest.h>

#include "tests/data/jinja_test_util.h"

namespace qtrain::jinja {
namespace {

const JinjaCase kCases[] = {
    {R"J(a  {%- if true %} b {% endif -%}  c)J",
     R"J({})J",
     R"J(a b c)J"},
    {R"J(line1
    {% if true %}
    x
    {% endif %}
end)J",
     R"J({})J",
     R"J(line1
    x
end)J"},
    {R"J(  {{ 'v' }}  
  {# c #}
z)J",
     R"J({})J",
     R"J(  v  
z)J"},
    {R"J(a{%+ if true %}b{% endif %}
{%- raw %}{{ x }}{% endraw %})J",
     R"J({})J",
     R"J(ab{{ x }})J"},
    {R"J(trailing
)J",
     R"J({})J",
     R"J(trailing)J"},
    {R"J(x
yz)J",
     R"J({})J",
     R"J(x
y
z)J"},
};

TEST(JinjaLexer, MatchesJinja2) {
  for (const auto& c : kCases) expect_render(c);
}

}  // namespace
}  // namespace qtrain::jinja
