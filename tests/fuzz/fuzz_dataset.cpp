// Dataset files of every format: read_records (.jsonl lines, a .json array or object, a .txt file;
// data/dataset/dataset_records.cpp), then render_record for each record (guanaco, alpaca, messages,
// sharegpt, text; data/dataset/dataset_formats.cpp) through each built-in chat template (Jinja, data/jinja/).
// Input: byte 0 picks the file extension and the format, byte 1 the chat template and train_on;
// the rest is the file.
#include "data/dataset/dataset_formats.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

using namespace qtrain;

constexpr const char* kExtensions[] = {".jsonl", ".json", ".txt"};
constexpr DataFormat kFormats[] = {DataFormat::kGuanaco, DataFormat::kAlpaca, DataFormat::kMessages,
                                   DataFormat::kShareGpt, DataFormat::kText};
constexpr ChatTemplateName kTemplates[] = {ChatTemplateName::kLlama2, ChatTemplateName::kLlama3, ChatTemplateName::kChatml,
                                           ChatTemplateName::kMistral, ChatTemplateName::kPlain};
constexpr TrainOn kTrainOn[] = {TrainOn::kTarget, TrainOn::kAssistant, TrainOn::kAll};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  namespace fz = qtrain::fuzz;
  if (size < 2) return 0;
  const uint8_t a = data[0], b = data[1];
  const auto dir = fz::fresh_dir("dataset");
  const auto file = dir / (std::string("train") + kExtensions[a % 3]);
  fz::write_file(file, std::string_view(reinterpret_cast<const char*>(data + 2), size - 2));

  DataConfig config;
  config.source_max_len = (b & 0x80) ? 16 : 0;
  config.sharegpt_role_map = {{"function_call", "assistant"}, {"observation", "user"}};
  FormatContext ctx;
  ctx.format = kFormats[(a / 3) % 5];
  ctx.train_on = kTrainOn[(b / 5) % 3];
  // A built-in template's Jinja text, as resolve_chat_template sets it up (without a model directory).
  ctx.chat.source = builtin_template_source(kTemplates[b % 5]);
  ctx.chat.name = to_string(kTemplates[b % 5]);
  ctx.chat.origin = "built-in " + ctx.chat.name;
  if (b & 0x20) ctx.chat.special_tokens = {{"bos_token", "<s>"}, {"eos_token", "</s>"}};
  if (b & 0x40) ctx.chat.vars = {{"enable_thinking", false}};
  ctx.chat.tmpl = std::make_shared<const jinja::Template>(ctx.chat.source, ctx.chat.origin);
  ctx.special = (b & 0x20) ? SpecialText{"<s>", "</s>"} : SpecialText{};
  ctx.config = &config;

  const std::vector<std::string> names = {file.string()};
  fz::expect_clean_errors(names, [&] {
    read_records(
        file,
        [&](const Record& r) {
          fz::expect_clean_errors(names, [&] {
            const RenderedRecord out = render_record(r, ctx);
            for (const Chunk& c : out.example.chunks) {
              // The tokenizer walks the spans as byte ranges of the text.
              size_t prev = 0;
              for (const TextSpan& s : c.spans) {
                if (s.end <= prev || s.end > c.text.size()) fz::finding("chunk spans out of order or past the text", "-", r.where);
                prev = s.end;
              }
              if (prev != c.text.size()) fz::finding("chunk spans do not cover the text", "-", r.where);
            }
          });
        },
        [&](const std::string& message) {
          if (message.find(file.string()) == std::string::npos) fz::finding("bad-record message does not name the file", "-", message);
        });
  });
  return 0;
}
