// Failures: raise_exception, undefined access, type errors, the sandbox, each an error (never a silent difference).
// Expected outputs were produced by transformers 5.23's jinja2 environment (chat_template_utils._compile_jinja_template)
// on the same template and variables; "ERR" rows are templates jinja2 refuses.
#include <gtest/gtest.h>

#include "tests/data/jinja_test_util.h"

namespace qtrain::jinja {
namespace {

const JinjaCase kCases[] = {
    {R"J({{ raise_exception('refused: ' ~ 3) }})J",
     R"J({})J",
     kError},
    {R"J({{ x.y }})J",
     R"J({})J",
     kError},
    {R"J({{ 'a' + 1 }})J",
     R"J({})J",
     kError},
    {R"J({% set ns = namespace(_p=1) %})J",
     R"J({})J",
     kError},
    {R"J({{ [].append }}{{ [].append(1) }})J",
     R"J({})J",
     kError},
    {R"J({{ {'a': 1}.pop('a') }})J",
     R"J({})J",
     kError},
    {R"J({% for a, b in [[1, 2], [3]] %}{% endfor %})J",
     R"J({})J",
     kError},
    // jinja2 renders "1" (printf formatting); qtrain refuses it with a clear error instead (no template uses it).
    {R"J({{ '%s' % 1 }})J",
     R"J({})J",
     kError},
};

TEST(JinjaError, MatchesJinja2) {
  for (const auto& c : kCases) expect_render(c);
}

// Every error names the template and the line:column of the construct.
std::string error_of(const std::string& source, const std::string& vars = "{}") {
  try {
    render_text(source, vars);
  } catch (const TemplateError& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(JinjaError, PositionsAndMessages) {
  EXPECT_EQ(error_of("line one\n  {{ x | nosuchfilter }}"), "test.jinja:2:10: No filter named 'nosuchfilter'.");
  EXPECT_EQ(error_of("{% if x is nosuchtest %}{% endif %}"), "test.jinja:1:12: No test named 'nosuchtest'.");
  EXPECT_EQ(error_of("a\nb {% frobnicate %}"), "test.jinja:2:6: Encountered unknown tag 'frobnicate'.");
  EXPECT_EQ(error_of("{% include 'x' %}"), "test.jinja:1:4: the 'include' tag is not supported in chat templates");
  EXPECT_EQ(error_of("{% if true %}never closed"), "test.jinja:1:26: unexpected end of template: expected 'elif' or 'else' or 'endif'");
  EXPECT_EQ(error_of("{{ 'unterminated }}"), "test.jinja:1:4: unexpected end of template in a string literal");
  EXPECT_EQ(error_of("{# comment"), "test.jinja:1:1: Missing end of comment tag");
  EXPECT_EQ(error_of("{{ (1 + 2 }}"), "test.jinja:1:11: unexpected '}', expected ')'");
  EXPECT_EQ(error_of("{% break %}"), "test.jinja:1:4: 'break' outside of a for loop");
  EXPECT_EQ(error_of("{% for x in y recursive %}{% endfor %}"), "test.jinja:1:15: recursive for loops are not supported");
  EXPECT_EQ(error_of("\n\n   {{ m.content.x }}", R"({"m": 5})"), "test.jinja:3:16: 'int object' has no attribute 'content'");
  EXPECT_EQ(error_of("{{ 'é' ~ x.y }}"), "test.jinja:1:11: 'x' is undefined");
  // The position (of the operator, the `.` of an attribute, the `(` of a call) counts code points, not bytes.
  EXPECT_EQ(error_of("ééé{{ 1 + 'a' }}"), "test.jinja:1:9: unsupported operand type(s) for +: 'int' and 'str'");
  EXPECT_THROW(Template("\xff{{ x }}", "bad.jinja"), InputError);  // not UTF-8
}

TEST(JinjaError, RaiseExceptionCarriesTheTemplatesMessage) {
  try {
    render_text("{% if messages[0].role == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}",
                R"({"messages": [{"role": "system", "content": "x"}]})");
    FAIL() << "no error";
  } catch (const TemplateRaised& e) {
    EXPECT_EQ(e.raised(), "System role not supported");
    EXPECT_EQ(e.pos().line, 1);
    EXPECT_EQ(e.pos().column, 56);  // the call's (
    EXPECT_EQ(static_cast<int>(e.code()), 3);
  }
}

TEST(JinjaError, GenerationBlocksAndTheFixedClock) {
  const Template t("{% for m in messages %}{{ m.role }}: {% if m.role == 'assistant' %}{% generation %}{{ m.content }}!{% endgeneration %}"
                   "{% else %}{{ m.content }}{% endif %}\n{% endfor %}{{ strftime_now('%d %b %Y') }}",
                   "gen.jinja");
  EXPECT_TRUE(t.has_generation());
  Dict vars;
  vars.set("messages", from_json(nlohmann::ordered_json::parse(
                           R"([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}, {"role": "assistant", "content": "é"}])")));
  const auto r = t.render(vars, parse_timestamp("2025-03-14T09:26:53", "test"));
  EXPECT_EQ(r.text, "user: hiassistant: yo!assistant: é!14 Mar 2025");  // trim_blocks ate the newlines after %}
  ASSERT_EQ(r.generation.size(), 2u);
  EXPECT_EQ(r.text.substr(r.generation[0].first, r.generation[0].second - r.generation[0].first), "yo!");
  EXPECT_EQ(r.text.substr(r.generation[1].first, r.generation[1].second - r.generation[1].first), "é!");
  EXPECT_FALSE(Template("{{ x }}", "t").has_generation());
  EXPECT_THROW(parse_timestamp("14/03/2025", "--now"), UsageError);
  EXPECT_EQ(format_timestamp(parse_timestamp("2025-03-14", "--now")), "2025-03-14T00:00:00");
}

TEST(JinjaError, RecursionIsBounded) {
  EXPECT_THROW(render_text("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}"), TemplateError);
}

}  // namespace
}  // namespace qtrain::jinja
