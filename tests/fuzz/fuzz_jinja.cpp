// The chat-template engine (data/jinja/): lexer, parser and interpreter on arbitrary templates. The
// input is the template source, then optionally (after the part separator) the messages as JSON.
// A malformed template or a failing render must be a TemplateError naming the template, never a
// crash, a hang (renders are bounded in steps here) or another exception.
#include "data/jinja/json.h"
#include "data/jinja/template.h"
#include "data/json_depth.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto parts = qtrain::fuzz::split_parts(data, size, 2);
  const std::string source(parts[0]);
  const std::string messages(parts[1]);
  qtrain::fuzz::expect_clean_errors({"fuzz.jinja"}, [&] {
    const qtrain::jinja::Template t(source, "fuzz.jinja");
    qtrain::jinja::Dict vars;
    nlohmann::ordered_json j = nlohmann::ordered_json::parse(
        R"([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi é 🙂"},
            {"role": "assistant", "content": " Hello ", "tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}}]}])");
    if (!messages.empty() && qtrain::json_too_deep_at(messages) == std::string_view::npos) {
      auto parsed = nlohmann::ordered_json::parse(messages, nullptr, false);
      if (!parsed.is_discarded()) j = parsed;
    }
    vars.set("messages", qtrain::jinja::from_json(j));
    vars.set("bos_token", qtrain::jinja::Value("<s>"));
    vars.set("eos_token", qtrain::jinja::Value("</s>"));
    vars.set("add_generation_prompt", qtrain::jinja::Value(true));
    vars.set("tools", qtrain::jinja::Value(qtrain::jinja::None{}));
    (void)t.render(vars, qtrain::jinja::parse_timestamp("2025-03-14T09:26:53", "fuzz"), /*max_steps=*/20000);
  });
  return 0;
}
