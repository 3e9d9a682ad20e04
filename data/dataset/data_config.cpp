#include "data/dataset/data_config.h"

#include <cstdio>

#include "data/error.h"

namespace qtrain {
namespace {

template <class E>
E parse_named(std::string_view s, std::string_view key, const std::vector<std::pair<E, std::string>>& table) {
  for (const auto& [e, name] : table)
    if (name == s) return e;
  std::string allowed;
  for (const auto& [e, name] : table) allowed += (allowed.empty() ? "" : ", ") + name;
  throw UsageError(std::string(key) + ": '" + std::string(s) + "' is not one of: " + allowed);
}

template <class E>
std::string name_of(E v, const std::vector<std::pair<E, std::string>>& table) {
  for (const auto& [e, name] : table)
    if (e == v) return name;
  throw std::logic_error("enum value without a name in data_config.cpp");
}

}  // namespace

const std::vector<std::pair<DataFormat, std::string>>& data_format_names() {
  static const std::vector<std::pair<DataFormat, std::string>> t = {
      {DataFormat::kGuanaco, "guanaco"}, {DataFormat::kAlpaca, "alpaca"}, {DataFormat::kMessages, "messages"},
      {DataFormat::kShareGpt, "sharegpt"}, {DataFormat::kText, "text"}};
  return t;
}
const std::vector<std::pair<ChatTemplateName, std::string>>& chat_template_names() {
  static const std::vector<std::pair<ChatTemplateName, std::string>> t = {
      {ChatTemplateName::kAuto, "auto"},       {ChatTemplateName::kLlama2, "llama-2"}, {ChatTemplateName::kLlama3, "llama-3"},
      {ChatTemplateName::kChatml, "chatml"},   {ChatTemplateName::kMistral, "mistral"}, {ChatTemplateName::kPlain, "plain"}};
  return t;
}
const std::vector<std::pair<TrainOn, std::string>>& train_on_names() {
  static const std::vector<std::pair<TrainOn, std::string>> t = {
      {TrainOn::kTarget, "target"}, {TrainOn::kAssistant, "assistant"}, {TrainOn::kAll, "all"}};
  return t;
}
const std::vector<std::pair<OnError, std::string>>& on_error_names() {
  static const std::vector<std::pair<OnError, std::string>> t = {{OnError::kFail, "fail"}, {OnError::kSkip, "skip"}};
  return t;
}

DataFormat parse_data_format(std::string_view s, std::string_view key) { return parse_named(s, key, data_format_names()); }
ChatTemplateName parse_chat_template_name(std::string_view s, std::string_view key) {
  return parse_named(s, key, chat_template_names());
}
TrainOn parse_train_on(std::string_view s, std::string_view key) { return parse_named(s, key, train_on_names()); }
OnError parse_on_error(std::string_view s, std::string_view key) { return parse_named(s, key, on_error_names()); }

std::string to_string(DataFormat f) { return name_of(f, data_format_names()); }
std::string to_string(ChatTemplateName t) { return name_of(t, chat_template_names()); }
std::string to_string(TrainOn t) { return name_of(t, train_on_names()); }
std::string to_string(OnError e) { return name_of(e, on_error_names()); }

std::vector<std::string> data_config_keys() {
  return {"files",         "format",          "template_name", "chat_template", "template_vars", "template_date",
          "train_on",   "source_max_len",
          "target_max_len", "max_seq_len",    "packing",       "group_by_length", "eval_fraction",
          "eval_files",    "on_error",        "sharegpt_role_map", "cache_dir", "seed"};
}

std::vector<std::pair<std::string, std::string>> data_config_problems(const DataConfig& c) {
  std::vector<std::pair<std::string, std::string>> p;
  if (c.files.empty()) p.emplace_back("files", "no dataset files (expected a list of {path, weight?, format?})");
  auto check_files = [&](const std::vector<DataFile>& files, const std::string& key) {
    for (size_t i = 0; i < files.size(); ++i) {
      const std::string k = key + "[" + std::to_string(i) + "]";
      if (files[i].path.empty()) p.emplace_back(k + ".path", "missing");
      if (!(files[i].weight > 0)) p.emplace_back(k + ".weight", "must be positive, found " + std::to_string(files[i].weight));
    }
  };
  check_files(c.files, "files");
  check_files(c.eval_files, "eval_files");
  if (c.source_max_len < 0) p.emplace_back("source_max_len", "must be >= 0 (0 = no limit)");
  if (c.target_max_len < 0) p.emplace_back("target_max_len", "must be >= 0 (0 = no limit)");
  if (c.max_seq_len < 2) p.emplace_back("max_seq_len", "must be at least 2, found " + std::to_string(c.max_seq_len));
  if (!(c.eval_fraction >= 0 && c.eval_fraction < 1))
    p.emplace_back("eval_fraction", "must be in [0, 1), found " + std::to_string(c.eval_fraction));
  if (!c.chat_template.empty()) {
    bool known = c.chat_template.size() > 6 && c.chat_template.substr(c.chat_template.size() - 6) == ".jinja";
    for (const auto& [e, n] : chat_template_names()) known = known || n == c.chat_template;
    if (!known) p.emplace_back("chat_template", "'" + c.chat_template + "' is not auto, a built-in name (llama-2, llama-3, chatml, mistral, plain) or a path to a .jinja file");
  }
  if (!c.template_date.empty()) {
    int y, mo, d;
    if (std::sscanf(c.template_date.c_str(), "%4d-%2d-%2d", &y, &mo, &d) != 3)
      p.emplace_back("template_date", "expected a time like 2025-03-14T09:26:53, found '" + c.template_date + "'");
  }
  for (const auto& [from, role] : c.sharegpt_role_map)
    if (role != "user" && role != "assistant" && role != "system" && role != "function_call" && role != "observation")
      p.emplace_back("sharegpt_role_map." + from, "'" + role + "' is not one of: user, assistant, system, function_call, observation");
  return p;
}

}  // namespace qtrain
