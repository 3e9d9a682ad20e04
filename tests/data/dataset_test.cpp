// Dataset formats, masking, truncation, the linter, and bad input (each a test): run on the shared tiny
// model's sentencepiece tokenizer (skipped when ../shared/data is absent).
#include <gtest/gtest.h>
#include <unistd.h>

#include <fstream>
#include <random>

#include "data/dataset/dataset.h"
#include "data/dataset/dataset_formats.h"
#include "data/error.h"
#include "data/dataset/example_tokenizer.h"
#include "data/tokenizer/tokenizer.h"

namespace fs = std::filesystem;
using namespace qtrain;

namespace {

const fs::path kShared = QTRAIN_SHARED_DATA;
const fs::path kModel = kShared / "models" / "llama2c-xs-tok512-hf";

class DatasetTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!fs::exists(kModel)) GTEST_SKIP() << "shared test data not found at " << kShared << " (present on CI)";
    tok_ = load_tokenizer(kModel);
    dir_ = fs::temp_directory_path() / ("qtrain_ds_" + std::to_string(::getpid()) + "_" + std::to_string(std::random_device{}()));
    fs::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ec;
    if (!dir_.empty()) fs::remove_all(dir_, ec);
  }
  fs::path write(const std::string& name, const std::string& text) {
    const auto p = dir_ / name;
    std::ofstream(p, std::ios::binary) << text;
    return p;
  }
  DataConfig config(const fs::path& file, DataFormat format) {
    DataConfig c;
    c.files = {{file, 1.0, std::nullopt}};
    c.format = format;
    c.cache_dir = dir_ / "cache";
    return c;
  }
  // The InputError message of building, or "" when it builds.
  std::string error_of(const DataConfig& c, DataReport* r = nullptr) {
    try {
      build_dataset(c, *tok_, kModel, r);
      return "";
    } catch (const InputError& e) {
      return e.what();
    }
  }
  std::vector<int32_t> enc(const std::string& s) { return tok_->encode(s, false); }

  std::unique_ptr<Tokenizer> tok_;
  fs::path dir_;
};

TEST_F(DatasetTest, GuanacoIsBosSourcePlusWholeTextAndEos) {
  // formats.md §4.5: source = BOS (masked), target = text + EOS tokenized as one string, all trained.
  const std::string text = "### Human: Hi there### Assistant: Hello friend";
  const auto f = write("g.jsonl", "{\"text\": \"" + text + "\"}\n");
  const auto ds = build_dataset(config(f, DataFormat::kGuanaco), *tok_, kModel, nullptr);
  ASSERT_EQ(ds.train->size(), 1);
  const auto ex = ds.train->at(0);
  std::vector<int32_t> expect = {*tok_->bos_id()};
  const auto target = enc(text + "</s>");
  expect.insert(expect.end(), target.begin(), target.end());
  EXPECT_EQ(std::vector<int32_t>(ex.ids.begin(), ex.ids.end()), expect);
  EXPECT_EQ(ex.trained[0], 0);
  for (size_t i = 1; i < ex.ids.size(); ++i) EXPECT_EQ(ex.trained[i], 1) << i;
  EXPECT_EQ(ex.ids.back(), *tok_->eos_id());
}

TEST_F(DatasetTest, GuanacoAssistantOnlyTrainsRepliesAndEos) {
  const auto f = write("g.jsonl", "{\"text\": \"### Human: one two### Assistant: three four### Human: five### Assistant: six\"}\n");
  auto c = config(f, DataFormat::kGuanaco);
  c.train_on = TrainOn::kAssistant;
  const auto ds = build_dataset(c, *tok_, kModel, nullptr);
  const auto ex = ds.train->at(0);
  std::string trained, untrained;
  for (size_t i = 0; i < ex.ids.size(); ++i) (ex.trained[i] ? trained : untrained) += tok_->id_to_token(ex.ids[i]);
  EXPECT_NE(trained.find("three"), std::string::npos);
  EXPECT_NE(trained.find("six"), std::string::npos);
  EXPECT_NE(trained.find("</s>"), std::string::npos);
  EXPECT_EQ(trained.find("one"), std::string::npos);
  EXPECT_EQ(trained.find("five"), std::string::npos);
  EXPECT_NE(untrained.find("Human"), std::string::npos);
  // Same ids as the whole-target mode: only the mask differs.
  const auto all = build_dataset(config(f, DataFormat::kGuanaco), *tok_, kModel, nullptr);
  EXPECT_EQ(std::vector<int32_t>(all.train->at(0).ids.begin(), all.train->at(0).ids.end()),
            std::vector<int32_t>(ex.ids.begin(), ex.ids.end()));
}

TEST_F(DatasetTest, AlpacaPromptIsSourceOutputIsTarget) {
  const auto f = write("a.json", R"([{"instruction": "Add", "input": "1 and 2", "output": "3"},
                                      {"instruction": "Greet", "output": "Hello"}])");
  const auto ds = build_dataset(config(f, DataFormat::kAlpaca), *tok_, kModel, nullptr);
  ASSERT_EQ(ds.train->size(), 2);
  for (int i = 0; i < 2; ++i) {
    const auto ex = ds.train->at(i);
    const auto source = enc("<s>" + alpaca_prompt(i == 0 ? "Add" : "Greet", i == 0 ? "1 and 2" : ""));
    const auto target = enc(std::string(i == 0 ? "3" : "Hello") + "</s>");
    ASSERT_EQ(ex.ids.size(), source.size() + target.size());
    for (size_t k = 0; k < ex.ids.size(); ++k) EXPECT_EQ(ex.trained[k], k >= source.size()) << k;
  }
}

TEST_F(DatasetTest, MessagesTrainAssistantTurnsWithTypedPartsAndLossWeight) {
  const auto f = write("m.jsonl",
                       R"({"messages": [{"role": "user", "content": [{"type": "text", "value": "hi"}]}, {"role": "assistant", "content": "hello there", "loss_weight": 1.0}]})"
                       "\n"
                       R"({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "loss_weight": 0}, {"role": "user", "content": "c"}, {"role": "assistant", "content": [{"type": "text", "text": "dee"}]}]})"
                       "\n");
  auto c = config(f, DataFormat::kMessages);
  c.template_name = ChatTemplateName::kPlain;
  const auto ds = build_dataset(c, *tok_, kModel, nullptr);
  ASSERT_EQ(ds.train->size(), 2);
  // Example 0: "<s>hi\nhello there</s>\n"; trained = "hello there</s>".
  const auto ex = ds.train->at(0);
  EXPECT_EQ(std::vector<int32_t>(ex.ids.begin(), ex.ids.end()), enc("<s>hi\nhello there</s>\n"));
  std::string trained;
  for (size_t i = 0; i < ex.ids.size(); ++i)
    if (ex.trained[i]) trained += tok_->id_to_token(ex.ids[i]);
  EXPECT_NE(trained.find("hello"), std::string::npos);
  EXPECT_NE(trained.find("</s>"), std::string::npos);
  EXPECT_EQ(trained.find("hi"), std::string::npos);
  // Example 1: "b" has loss_weight 0.
  const auto ex1 = ds.train->at(1);
  std::string t1;
  for (size_t i = 0; i < ex1.ids.size(); ++i)
    if (ex1.trained[i]) t1 += tok_->id_to_token(ex1.ids[i]);
  EXPECT_NE(t1.find("dee"), std::string::npos);
  EXPECT_EQ(t1.find("b"), std::string::npos) << t1;
}

TEST_F(DatasetTest, ShareGptRolesAreMappedOrRejected) {
  const auto f = write("s.json", R"([{"conversations": [{"from": "human", "value": "q"}, {"from": "function_call", "value": "{}"}, {"from": "observation", "value": "r"}, {"from": "gpt", "value": "a"}]}])");
  auto c = config(f, DataFormat::kShareGpt);
  c.template_name = ChatTemplateName::kChatml;
  const std::string err = error_of(c);
  EXPECT_NE(err.find("s.json:1"), std::string::npos) << err;
  EXPECT_NE(err.find("function_call"), std::string::npos) << err;
  c.sharegpt_role_map = {{"function_call", "assistant"}, {"observation", "user"}};
  EXPECT_EQ(error_of(c), "");
}

TEST_F(DatasetTest, TextIsChunkedToMaxSeqLenAllTrained) {
  std::string text;
  for (int i = 0; i < 200; ++i) text += "Once upon a time there was a cat. ";
  const auto f = write("t.txt", text);
  auto c = config(f, DataFormat::kText);
  c.max_seq_len = 64;
  const auto ds = build_dataset(c, *tok_, kModel, nullptr);
  const auto whole = enc("<s>" + text + "</s>");
  ASSERT_EQ(ds.train->size(), static_cast<int64_t>((whole.size() + 63) / 64));
  std::vector<int32_t> joined;
  for (int64_t i = 0; i < ds.train->size(); ++i) {
    const auto ex = ds.train->at(i);
    EXPECT_LE(ex.ids.size(), 64u);
    joined.insert(joined.end(), ex.ids.begin(), ex.ids.end());
    for (auto t : ex.trained) EXPECT_EQ(t, 1);
  }
  EXPECT_EQ(joined, whole);
}

TEST_F(DatasetTest, TruncationCountsAndLostEos) {
  // target_max_len cuts the target (and its EOS) as QLoRA does; the linter counts it.
  const auto f = write("g.jsonl", "{\"text\": \"a b c d e f g h i j k l m n o p\"}\n{\"text\": \"short\"}\n");
  auto c = config(f, DataFormat::kGuanaco);
  c.target_max_len = 5;
  DataReport r;
  const auto ds = build_dataset(c, *tok_, kModel, &r);
  EXPECT_EQ(r.train_files.truncated, 1);
  EXPECT_EQ(r.train_files.truncated_lost_eos, 1);
  EXPECT_EQ(ds.train->length(0), 1 + 5);
  EXPECT_NE(ds.train->at(0).ids.back(), *tok_->eos_id());
  EXPECT_EQ(ds.train->at(1).ids.back(), *tok_->eos_id());
  bool found = false;
  for (const auto& l : lint(r)) found |= l.find("1 examples truncated (1 of them lost") != std::string::npos;
  EXPECT_TRUE(found);
}

TEST_F(DatasetTest, PadMissingIsReportedWithWhatWasDone) {
  // The tiny model's tokenizer_config sets pad_token null.
  const auto f = write("g.jsonl", "{\"text\": \"x\"}\n");
  DataReport r;
  build_dataset(config(f, DataFormat::kGuanaco), *tok_, kModel, &r);
  EXPECT_FALSE(r.pad_id.has_value());
  EXPECT_EQ(r.pad_used, *tok_->eos_id());
  EXPECT_NE(r.pad_action.find("no pad token"), std::string::npos) << r.pad_action;
}

TEST_F(DatasetTest, TemplateThatNeverEmitsEosIsFlagged) {
  // The llama-3 template ends turns with <|eot_id|>, which this tokenizer's EOS (</s>) is not: the
  // linter must say the template never emits a trained EOS. The plain template (control) does emit it.
  const auto f = write("m.jsonl", "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}, {\"role\": \"assistant\", \"content\": \"b\"}]}\n");
  auto flagged = [&](ChatTemplateName t) {
    auto c = config(f, DataFormat::kMessages);
    c.template_name = t;
    DataReport r;
    build_dataset(c, *tok_, kModel, &r);
    bool found = false;
    for (const auto& l : lint(r)) found |= l.find("never emits a trained EOS") != std::string::npos;
    return found;
  };
  EXPECT_TRUE(flagged(ChatTemplateName::kLlama3));
  EXPECT_FALSE(flagged(ChatTemplateName::kPlain));
}

TEST_F(DatasetTest, EvalFractionAndWeightsAreDeterministic) {
  std::string lines;
  for (int i = 0; i < 50; ++i) lines += "{\"text\": \"row " + std::to_string(i) + "\"}\n";
  const auto f = write("g.jsonl", lines);
  auto c = config(f, DataFormat::kGuanaco);
  c.eval_fraction = 0.2;
  c.files[0].weight = 1.5;
  const auto a = build_dataset(c, *tok_, kModel, nullptr);
  const auto b = build_dataset(c, *tok_, kModel, nullptr);
  EXPECT_EQ(a.eval->size(), 10);
  EXPECT_EQ(a.train->size(), 40 + 20);
  EXPECT_EQ(a.train->tokens, b.train->tokens);
  EXPECT_EQ(a.eval->tokens, b.eval->tokens);
  c.seed = 7;
  const auto d = build_dataset(c, *tok_, kModel, nullptr);
  EXPECT_NE(a.eval->tokens, d.eval->tokens);  // another seed holds out other rows
}

// ---------------------------------------------------------------- bad input, each a test

TEST_F(DatasetTest, MalformedJsonLineNamesFileAndLine) {
  const auto f = write("bad.jsonl", "{\"text\": \"ok\"}\n{\"text\": \"broken\n{\"text\": \"fine\"}\n");
  auto c = config(f, DataFormat::kGuanaco);
  const std::string err = error_of(c);
  EXPECT_NE(err.find("bad.jsonl:2: malformed JSON"), std::string::npos) << err;
  c.on_error = OnError::kSkip;
  DataReport r;
  EXPECT_EQ(error_of(c, &r), "");
  EXPECT_EQ(r.train_files.skipped, 1);
  EXPECT_EQ(r.train_files.examples, 2);
  bool found = false;
  for (const auto& l : lint(r)) found |= l.find("1 bad records skipped") != std::string::npos;
  EXPECT_TRUE(found);
}

TEST_F(DatasetTest, MissingFieldNamesFieldAndLine) {
  const auto f = write("a.jsonl", "{\"instruction\": \"x\", \"output\": \"y\"}\n{\"instruction\": \"x\"}\n");
  const std::string err = error_of(config(f, DataFormat::kAlpaca));
  EXPECT_NE(err.find("a.jsonl:2: missing field 'output'"), std::string::npos) << err;
}

TEST_F(DatasetTest, WrongTypeNamesExpectedAndFound) {
  const auto f = write("m.json", "[\n{\"messages\": [{\"role\": \"user\", \"content\": 5}]}\n]");
  auto c = config(f, DataFormat::kMessages);
  c.template_name = ChatTemplateName::kChatml;
  const std::string err = error_of(c);
  EXPECT_NE(err.find("m.json:2: field 'messages[0].content': expected a string or a list of text parts, found number"), std::string::npos) << err;
}

TEST_F(DatasetTest, InvalidUtf8NamesLine) {
  const auto f = write("u.jsonl", "{\"text\": \"ok\"}\n{\"text\": \"bad \xff\xfe byte\"}\n");
  const std::string err = error_of(config(f, DataFormat::kGuanaco));
  EXPECT_NE(err.find("u.jsonl:2: invalid UTF-8"), std::string::npos) << err;
}

TEST_F(DatasetTest, EmptyFileIsAnError) {
  const auto f = write("empty.jsonl", "\n  \n");
  const std::string err = error_of(config(f, DataFormat::kGuanaco));
  EXPECT_NE(err.find("empty.jsonl: empty dataset file"), std::string::npos) << err;
  const auto g = write("empty.json", "[]");
  EXPECT_NE(error_of(config(g, DataFormat::kAlpaca)).find("empty.json: empty dataset file"), std::string::npos);
}

TEST_F(DatasetTest, EveryLabelMaskedIsAnError) {
  // Only user turns: nothing to train in any example.
  const auto f = write("m.jsonl", "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}]}\n{\"messages\": [{\"role\": \"user\", \"content\": \"b\"}]}\n");
  auto c = config(f, DataFormat::kMessages);
  c.template_name = ChatTemplateName::kLlama2;
  const std::string err = error_of(c);
  EXPECT_NE(err.find("no example has a trained token"), std::string::npos) << err;
  EXPECT_NE(err.find("2 dropped because nothing is left to train"), std::string::npos) << err;
}

TEST_F(DatasetTest, UnknownFormatOrTemplateIsAUsageError) {
  EXPECT_THROW(parse_data_format("parquet"), UsageError);
  try {
    parse_chat_template_name("vicuna");
    FAIL();
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("data.template_name: 'vicuna' is not one of: auto, llama-2"), std::string::npos) << e.what();
  }
  // A model's own template is rendered whatever it is (no fingerprints): one that drops the assistant's
  // reply leaves nothing to train, and says so.
  fs::create_directories(dir_ / "model");
  for (const auto& e : fs::directory_iterator(kModel)) fs::copy(e.path(), dir_ / "model" / e.path().filename());
  std::ofstream(dir_ / "model" / "tokenizer_config.json") << R"({"chat_template": "{{ messages[0]['content'] }}", "bos_token": "<s>", "eos_token": "</s>"})";
  const auto f = write("m.jsonl", "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}, {\"role\": \"assistant\", \"content\": \"b\"}]}\n");
  auto c = config(f, DataFormat::kMessages);
  try {
    build_dataset(c, *tok_, dir_ / "model", nullptr);
    FAIL() << "expected an InputError";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("no example has a trained token"), std::string::npos) << e.what();
  }
  // An unknown template name or a missing .jinja file is a usage error naming the key.
  c.chat_template = "vicuna";
  EXPECT_NE(data_config_problems(c).at(0).second.find("'vicuna' is not auto, a built-in name"), std::string::npos);
  c.chat_template = (dir_ / "missing.jinja").string();
  EXPECT_THROW(build_dataset(c, *tok_, dir_ / "model", nullptr), UsageError);
}

TEST_F(DatasetTest, Llama2NeedsAlternatingRoles) {
  const auto f = write("m.jsonl", "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}, {\"role\": \"user\", \"content\": \"b\"}]}\n");
  auto c = config(f, DataFormat::kMessages);
  c.template_name = ChatTemplateName::kLlama2;
  EXPECT_NE(error_of(c).find("m.jsonl:1: the chat template refuses this conversation: Conversation roles must alternate"), std::string::npos)
      << error_of(c);
}

// ---------------------------------------------------------------- the shared datasets

TEST_F(DatasetTest, EverySharedDatasetBuilds) {
  struct Case {
    const char* path;
    DataFormat format;
  };
  for (const Case& k : {Case{"guanaco-format/chinkara-open_qa.jsonl", DataFormat::kGuanaco},
                        Case{"alpaca-format/alpaca_en_demo.json", DataFormat::kAlpaca},
                        Case{"alpaca-format/identity.json", DataFormat::kAlpaca},
                        Case{"messages-format/v1_sft_demo.jsonl", DataFormat::kMessages},
                        Case{"sharegpt-format/glaive_toolcall_en_demo.json", DataFormat::kShareGpt}}) {
    auto c = config(kShared / "datasets" / k.path, k.format);
    c.sharegpt_role_map = {{"function_call", "assistant"}, {"observation", "user"}};
    DataReport r;
    const auto ds = build_dataset(c, *tok_, kModel, &r);
    EXPECT_GT(ds.train->size(), 50) << k.path;
    EXPECT_EQ(r.train_files.skipped, 0) << k.path;
    EXPECT_GT(r.train_files.label_tokens, 0) << k.path;
  }
}

}  // namespace
