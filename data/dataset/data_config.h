// The `data:` section of a recipe as one typed struct (design.md §11): every default lives here, strings
// become enums at the boundary (parse_* below throw UsageError naming the key and the allowed values),
// and the recipe parser (trainer/config.cpp) maps YAML keys 1:1 onto these field names.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace qtrain {

// How a record of a dataset file becomes a training example.
enum class DataFormat {
  kGuanaco,   // {"text": "### Human: ... ### Assistant: ..."}: QLoRA oasst1 (formats.md §4.5)
  kAlpaca,    // {"instruction", "input", "output"} with the Alpaca prompt
  kMessages,  // {"messages": [{"role", "content", "loss_weight"?}]} through a chat template
  kShareGpt,  // {"conversations": [{"from", "value"}]} through a chat template
  kText,      // {"text": ...} (or a .txt file): raw text, chunked to max_seq_len
};

// Built-in chat templates (their official Jinja text); kAuto renders with the model's own template.
enum class ChatTemplateName { kAuto, kLlama2, kLlama3, kChatml, kMistral, kPlain };

// Which tokens carry labels: the target (guanaco/alpaca: the output; chats: the assistant turns),
// the assistant turns only (guanaco: the "### Assistant:" replies, not the whole text), or everything.
enum class TrainOn { kTarget, kAssistant, kAll };

// A malformed record stops the run (naming file and line) or is skipped and counted in the report.
enum class OnError { kFail, kSkip };

struct DataFile {
  std::filesystem::path path;             // .json (array), .jsonl, or .txt (format text only)
  double weight = 1.0;                    // copies per epoch: integer part always, fraction sampled by seed
  std::optional<DataFormat> format;       // overrides DataConfig::format for this file
};

struct DataConfig {
  std::vector<DataFile> files;
  DataFormat format = DataFormat::kGuanaco;
  ChatTemplateName template_name = ChatTemplateName::kAuto;
  // "auto" (the model's own Jinja template), a built-in name, or a path to a .jinja file; "" = template_name.
  std::string chat_template;
  // Extra template variables, NAME → value as JSON text (enable_thinking: false, date_string: "26 Jul 2024").
  std::vector<std::pair<std::string, std::string>> template_vars;
  // The time strftime_now sees, "YYYY-MM-DDTHH:MM:SS"; "" = pinned the first time the data is built
  // (stored in cache_dir/chat_template_date, so resume and preview render the same text).
  std::string template_date;
  TrainOn train_on = TrainOn::kTarget;
  // QLoRA's collator lengths (formats.md §4.5), for the source/target formats (guanaco, alpaca):
  // source = BOS + prompt cut to source_max_len, target = output + EOS cut to target_max_len; 0 = no limit.
  int64_t source_max_len = 0;  // the QLoRA guanaco recipe uses 16 (the source is just BOS there)
  int64_t target_max_len = 512;
  int64_t max_seq_len = 2048;  // every example (and every packed row) is cut to this many tokens
  bool packing = false;          // several examples per row, positions restart, no cross-document attention
  bool group_by_length = false;  // length-sorted mega-batches, shuffled (HF LengthGroupedSampler semantics)
  double eval_fraction = 0.0;    // held out of `files` for evaluation, chosen by `seed`
  std::vector<DataFile> eval_files;  // explicit evaluation data (used instead of eval_fraction when given)
  OnError on_error = OnError::kFail;
  std::map<std::string, std::string> sharegpt_role_map;  // extra ShareGPT "from" → user|assistant|system
  std::filesystem::path cache_dir;  // "" = <output_dir>/cache (the trainer fills it) or ~/.cache/qtrain/data
  uint64_t seed = 42;               // shuffling, the eval split and fractional weights
};

// Names as written in recipes, in the order shown to users.
const std::vector<std::pair<DataFormat, std::string>>& data_format_names();
const std::vector<std::pair<ChatTemplateName, std::string>>& chat_template_names();
const std::vector<std::pair<TrainOn, std::string>>& train_on_names();
const std::vector<std::pair<OnError, std::string>>& on_error_names();

// Throw UsageError "<key>: 'x' is not one of: a, b, c" for an unknown name.
DataFormat parse_data_format(std::string_view s, std::string_view key = "data.format");
ChatTemplateName parse_chat_template_name(std::string_view s, std::string_view key = "data.template_name");
TrainOn parse_train_on(std::string_view s, std::string_view key = "data.train_on");
OnError parse_on_error(std::string_view s, std::string_view key = "data.on_error");

std::string to_string(DataFormat f);
std::string to_string(ChatTemplateName t);
std::string to_string(TrainOn t);
std::string to_string(OnError e);

// Every key of the data section ("files", "format", ...), for nearest-key suggestions.
std::vector<std::string> data_config_keys();

// Impossible values, each as {key, message}, e.g. {"max_seq_len", "must be positive, found 0"}.
// Empty when the config is usable. (Files are checked when they are read.)
std::vector<std::pair<std::string, std::string>> data_config_problems(const DataConfig& c);

}  // namespace qtrain
