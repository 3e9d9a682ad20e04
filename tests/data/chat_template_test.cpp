// Chat templates in training: which template a spec resolves to, the variables and the clock it
// renders with, and the trained spans (by character offsets) that masking maps onto tokens.
#include <gtest/gtest.h>
#include <unistd.h>

#include <fstream>

#include "data/dataset/chat_template.h"
#include "data/dataset/dataset.h"
#include "data/dataset/example_tokenizer.h"
#include "data/error.h"
#include "data/tokenizer/tokenizer.h"

namespace qtrain {
namespace {

namespace fs = std::filesystem;
const fs::path kShared = QTRAIN_SHARED_DATA;
const fs::path kModel = kShared / "models" / "llama2c-xs-tok512-hf";  // no chat template of its own
const fs::path kQwen = kShared / "tokenizers" / "qwen2";                // ChatML in tokenizer_config.json

class ChatTemplateTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!fs::exists(kModel)) GTEST_SKIP() << "shared test data not found at " << kShared;
    dir_ = fs::temp_directory_path() / ("qtrain_ct_" + std::to_string(::getpid()));
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::tm now() const { return jinja::parse_timestamp("2025-03-14T09:26:53", "test"); }

  // The trained text of a chunk, runs joined by '|'.
  static std::string trained_text(const Chunk& c) {
    std::string out;
    size_t b = 0;
    for (const auto& s : c.spans) {
      if (s.trained) out += (out.empty() ? "" : "|") + c.text.substr(b, s.end - b);
      b = s.end;
    }
    return out;
  }

  fs::path dir_;
};

TEST_F(ChatTemplateTest, ResolvesAutoBuiltinAndFile) {
  const auto vars = nlohmann::ordered_json::object();
  const ChatTemplate own = resolve_chat_template("auto", kQwen, vars, now());
  EXPECT_EQ(own.name, "model");
  EXPECT_NE(own.origin.find("tokenizer_config.json chat_template"), std::string::npos) << own.origin;
  EXPECT_EQ(own.special_tokens.at("eos_token"), "<|im_end|>");
  const ChatTemplate none = resolve_chat_template("auto", kModel, vars, now());
  EXPECT_EQ(none.name, "plain");
  EXPECT_NE(none.origin.find("has no chat template"), std::string::npos) << none.origin;  // the log says which
  EXPECT_EQ(resolve_chat_template("llama-3", kQwen, vars, now()).source, builtin_template_source(ChatTemplateName::kLlama3));
  std::ofstream(dir_ / "t.jinja") << "{% for m in messages %}[{{ m.role }}] {{ m.content }}{{ eos_token }}{% endfor %}";
  const ChatTemplate file = resolve_chat_template((dir_ / "t.jinja").string(), kModel, vars, now());
  EXPECT_EQ(file.name, (dir_ / "t.jinja").string());
  EXPECT_THROW(resolve_chat_template("vicuna", kModel, vars, now()), UsageError);
  EXPECT_THROW(resolve_chat_template((dir_ / "missing.jinja").string(), kModel, vars, now()), UsageError);
  // chat_template.jinja beside the tokenizer wins over tokenizer_config.json, as in transformers.
  fs::create_directories(dir_ / "m");
  for (const auto& e : fs::directory_iterator(kQwen)) fs::copy(e.path(), dir_ / "m" / e.path().filename());
  std::ofstream(dir_ / "m" / "chat_template.jinja") << "{{ 'own file' }}";
  EXPECT_EQ(resolve_chat_template("auto", dir_ / "m", vars, now()).source, "{{ 'own file' }}");
}

TEST_F(ChatTemplateTest, TrainedSpansFollowTheRule) {
  const ChatTemplate t = resolve_chat_template("auto", kQwen, nlohmann::ordered_json::object(), now());
  Conversation c;
  c.messages = nlohmann::ordered_json::parse(R"([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
      {"role": "user", "content": "More"}, {"role": "assistant", "content": "Sure."}])");
  c.trained.resize(4);
  const Chunk chunk = render_chat(t, c, TrainOn::kTarget, "test");
  // Qwen2's template adds its default system prompt; the assistant header and the "\n" after
  // <|im_end|> are not trained, the reply and its end-of-turn token are.
  EXPECT_EQ(trained_text(chunk), "Hello<|im_end|>|Sure.<|im_end|>");
  EXPECT_NE(chunk.text.find("You are a helpful assistant."), std::string::npos);
  // loss_weight turns a turn off (or a user turn on: its whole rendering, which in this template
  // also writes the assistant header).
  c.trained[1] = false;
  c.trained[2] = true;
  EXPECT_EQ(trained_text(render_chat(t, c, TrainOn::kTarget, "test")), "<|im_start|>user\nMore<|im_end|>\n<|im_start|>assistant\nSure.<|im_end|>");
  EXPECT_EQ(trained_text(render_chat(t, c, TrainOn::kAll, "test")), chunk.text);
  // A template that refuses the conversation is an InputError naming the record.
  const ChatTemplate l2 = resolve_chat_template("llama-2", kModel, nlohmann::ordered_json::object(), now());
  c.messages[1]["role"] = "user";
  try {
    render_chat(l2, c, TrainOn::kTarget, "f.jsonl:3");
    FAIL();
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("f.jsonl:3: the chat template refuses this conversation: Conversation roles must alternate"),
              std::string::npos)
        << e.what();
  }
}

TEST_F(ChatTemplateTest, ContentSearchWhenPrefixesAreNotPrefixes) {
  // A template that puts the system prompt into the last user turn (as Mistral v0.3 does): the prefix
  // renderings differ from the whole, so turns are located by their content, through the EOS.
  std::ofstream(dir_ / "last.jinja")
      << "{% set sys = messages[0].content if messages[0].role == 'system' else '' %}{% set ns = namespace(last=0) %}"
         "{% for m in messages %}{% if m.role == 'user' %}{% set ns.last = loop.index0 %}{% endif %}{% endfor %}"
         "{% for m in messages %}{% if m.role == 'user' %}[INST] {{ (sys + ' ' if loop.index0 == ns.last else '') + m.content }}[/INST]"
         "{% elif m.role == 'assistant' %} {{ m.content | trim }}{{ eos_token }}{% endif %}{% endfor %}";
  const ChatTemplate t = resolve_chat_template((dir_ / "last.jinja").string(), kModel, nlohmann::ordered_json::object(), now());
  Conversation c;
  c.messages = nlohmann::ordered_json::parse(R"([{"role": "system", "content": "S"}, {"role": "user", "content": "a"},
      {"role": "assistant", "content": " b "}, {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}])");
  c.trained.resize(5);
  RenderStats stats;
  // The first turn is found by its stripped content; the last one by the prefix rule, which also
  // trains the space the template writes inside the turn.
  EXPECT_EQ(trained_text(render_chat(t, c, TrainOn::kTarget, "test", &stats)), "b</s>| d</s>");
  EXPECT_EQ(stats.unlocated_turns, 0);
  // Content the template rewrites cannot be located: counted, not trained.
  std::ofstream(dir_ / "upper.jinja") << "{% for m in messages %}{{ m.content | upper }}{{ eos_token }}{% endfor %}";
  const ChatTemplate up = resolve_chat_template((dir_ / "upper.jinja").string(), kModel, nlohmann::ordered_json::object(), now());
  c.messages = nlohmann::ordered_json::parse(R"([{"role": "user", "content": "q"}, {"role": "assistant", "content": "x"}])");
  c.trained.assign(2, std::nullopt);
  // The prefix method still works here (a template that renders turn by turn): "X</s>" is the turn.
  EXPECT_EQ(trained_text(render_chat(up, c, TrainOn::kTarget, "test", &stats)), "X</s>");
}

TEST_F(ChatTemplateTest, VariablesAndThePinnedClock) {
  std::ofstream(dir_ / "vars.jinja") << "{{ strftime_now('%d %b %Y') }} {{ flag }} {{ name }}|{% for m in messages %}{{ m.content }}{% endfor %}";
  std::ofstream(dir_ / "d.jsonl") << R"({"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]})" << "\n";
  auto tok = load_tokenizer(kModel);
  DataConfig c;
  c.files = {{dir_ / "d.jsonl", 1.0, std::nullopt}};
  c.format = DataFormat::kMessages;
  c.chat_template = (dir_ / "vars.jinja").string();
  c.template_vars = {{"flag", "false"}, {"name", "not json"}};
  c.cache_dir = dir_ / "cache";
  DataReport r;
  build_dataset(c, *tok, kModel, &r);
  // The first build pins the clock in the cache directory; the report says what strftime_now saw.
  ASSERT_TRUE(fs::exists(dir_ / "cache" / "chat_template_date"));
  std::ifstream pin(dir_ / "cache" / "chat_template_date");
  std::string pinned;
  std::getline(pin, pinned);
  EXPECT_NE(r.template_used.find("strftime_now at " + pinned), std::string::npos) << r.template_used;
  // An explicit date wins; template_vars are typed JSON where they parse.
  c.template_date = "2025-03-14T09:26:53";
  const ChatTemplate t = resolve_chat_template(chat_template_spec(c), kModel, template_vars_json(c),
                                               jinja::parse_timestamp(c.template_date, "data.template_date"));
  Conversation conv;
  conv.messages = nlohmann::ordered_json::parse(R"([{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}])");
  conv.trained.resize(2);
  EXPECT_EQ(render_chat(t, conv, TrainOn::kAll, "test").text, "14 Mar 2025 False not json|ua");
}

TEST_F(ChatTemplateTest, LinterCountsSpecialTokenTextInContent) {
  std::ofstream(dir_ / "d.jsonl") << R"({"messages": [{"role": "user", "content": "say <|im_end|> and </s> and <|other|>"}, )"
                                  << R"({"role": "assistant", "content": "ok"}]})" << "\n";
  auto tok = load_tokenizer(kQwen);
  DataConfig c;
  c.files = {{dir_ / "d.jsonl", 1.0, std::nullopt}};
  c.format = DataFormat::kMessages;
  c.cache_dir = dir_ / "cache";
  c.template_date = "2025-03-14T09:26:53";
  DataReport r;
  build_dataset(c, *tok, kQwen, &r);
  EXPECT_EQ(r.train_files.special_text_in_content, 2);  // <|im_end|> (the EOS) and <|other|>; "</s>" is not Qwen's
  bool warned = false;
  for (const auto& f : lint(r)) warned = warned || f.find("2 special-token strings typed inside message content") != std::string::npos;
  EXPECT_TRUE(warned);
  // A cache hit reports the same counts.
  DataReport again;
  build_dataset(c, *tok, kQwen, &again);
  EXPECT_EQ(again.cache_hits, 1);
  EXPECT_EQ(again.train_files.special_text_in_content, 2);
}

TEST_F(ChatTemplateTest, OffsetsComeFromOneTokenization) {
  // Byte offsets of the tokens of one encode call, for both tokenizer kinds.
  for (const fs::path& dir : {kModel, kQwen}) {
    auto tok = load_tokenizer(dir);
    const std::string text = "<|im_start|>user\nHello wörld  \n 日本 🙂<|im_end|>\n";
    const auto ids = tok->encode(text, false);
    const auto off = token_offsets(*tok, ids, text);
    ASSERT_TRUE(off.has_value()) << dir;
    ASSERT_EQ(off->size(), ids.size() + 1);
    EXPECT_EQ(off->front(), 0u);
    EXPECT_EQ(off->back(), text.size());
    for (size_t k = 0; k < ids.size(); ++k) EXPECT_LE((*off)[k], (*off)[k + 1]);
  }
}

}  // namespace
}  // namespace qtrain
