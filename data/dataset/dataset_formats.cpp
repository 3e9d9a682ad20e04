#include "data/dataset/dataset_formats.h"

#include "data/error.h"

namespace qtrain {
namespace {

std::string shown(const nlohmann::json& v) {
  std::string s = v.dump();
  return s.size() > 60 ? s.substr(0, 57) + "..." : s;
}

[[noreturn]] void bad_field(const Record& r, const std::string& field, const std::string& expected, const nlohmann::json* found) {
  if (!found) throw InputError(r.where + ": missing field '" + field + "' (expected " + expected + ")");
  throw InputError(r.where + ": field '" + field + "': expected " + expected + ", found " + found->type_name() + " " + shown(*found));
}

const nlohmann::json& object_of(const Record& r) {
  if (!r.value.is_object()) throw InputError(r.where + ": expected a JSON object, found " + std::string(r.value.type_name()) + " " + shown(r.value));
  return r.value;
}

std::string string_field(const Record& r, const nlohmann::json& obj, const std::string& field, bool required,
                         const std::string& prefix = "") {
  auto it = obj.find(field);
  if (it == obj.end() || (it->is_null() && !required)) {
    if (required) bad_field(r, prefix + field, "a string", nullptr);
    return "";
  }
  if (!it->is_string()) bad_field(r, prefix + field, "a string", &*it);
  return it->get<std::string>();
}

// content: a string, or a list of typed parts of which only text is accepted.
std::string message_content(const Record& r, const nlohmann::json& m, const std::string& prefix) {
  auto it = m.find("content");
  if (it == m.end()) bad_field(r, prefix + "content", "a string or a list of text parts", nullptr);
  if (it->is_string()) return it->get<std::string>();
  if (!it->is_array()) bad_field(r, prefix + "content", "a string or a list of text parts", &*it);
  std::string out;
  for (size_t k = 0; k < it->size(); ++k) {
    const auto& part = (*it)[k];
    const std::string pp = prefix + "content[" + std::to_string(k) + "]";
    if (!part.is_object()) bad_field(r, pp, "an object {\"type\": \"text\", \"text\": ...}", &part);
    const std::string type = part.contains("type") && part["type"].is_string() ? part["type"].get<std::string>() : "";
    if (type != "text") bad_field(r, pp + ".type", "\"text\" (only text parts can be trained on)", part.contains("type") ? &part["type"] : nullptr);
    const char* key = part.contains("text") ? "text" : "value";
    out += string_field(r, part, key, true, pp + ".");
  }
  return out;
}

Conversation read_messages(const Record& r, const FormatContext& ctx) {
  const auto& obj = object_of(r);
  auto it = obj.find("messages");
  if (it == obj.end()) bad_field(r, "messages", "a list of {role, content}", nullptr);
  if (!it->is_array()) bad_field(r, "messages", "a list of {role, content}", &*it);
  Conversation c;
  for (size_t i = 0; i < it->size(); ++i) {
    const auto& m = (*it)[i];
    const std::string prefix = "messages[" + std::to_string(i) + "].";
    if (!m.is_object()) bad_field(r, "messages[" + std::to_string(i) + "]", "an object {role, content}", &m);
    const std::string role = string_field(r, m, "role", true, prefix);
    Turn t{Role::kUser, message_content(r, m, prefix), std::nullopt};
    if (role == "user") t.role = Role::kUser;
    else if (role == "assistant") t.role = Role::kAssistant;
    else if (role == "system") t.role = Role::kSystem;
    else throw InputError(r.where + ": field '" + prefix + "role': '" + role + "' is not one of: system, user, assistant");
    if (auto lw = m.find("loss_weight"); lw != m.end() && !lw->is_null()) {
      if (!lw->is_number()) bad_field(r, prefix + "loss_weight", "a number (0 = not trained)", &*lw);
      const double w = lw->get<double>();
      if (w != 0.0 && w != 1.0) bad_field(r, prefix + "loss_weight", "0 or 1 (labels are a mask; fractional weights are not supported)", &*lw);
      // A weight keeps the recipe's train_on meaning for assistant turns; it can only turn training off,
      // or on for a non-assistant turn under train_on target.
      t.trained = w != 0.0;
    }
    c.turns.push_back(std::move(t));
  }
  (void)ctx;
  return c;
}

Conversation read_sharegpt(const Record& r, const FormatContext& ctx) {
  const auto& obj = object_of(r);
  auto it = obj.find("conversations");
  if (it == obj.end()) bad_field(r, "conversations", "a list of {from, value}", nullptr);
  if (!it->is_array()) bad_field(r, "conversations", "a list of {from, value}", &*it);
  Conversation c;
  for (size_t i = 0; i < it->size(); ++i) {
    const auto& m = (*it)[i];
    const std::string prefix = "conversations[" + std::to_string(i) + "].";
    if (!m.is_object()) bad_field(r, "conversations[" + std::to_string(i) + "]", "an object {from, value}", &m);
    std::string from = string_field(r, m, "from", true, prefix);
    Turn t{Role::kUser, string_field(r, m, "value", true, prefix), std::nullopt};
    if (ctx.config) {
      if (auto mapped = ctx.config->sharegpt_role_map.find(from); mapped != ctx.config->sharegpt_role_map.end()) from = mapped->second;
    }
    if (from == "human" || from == "user") t.role = Role::kUser;
    else if (from == "gpt" || from == "assistant") t.role = Role::kAssistant;
    else if (from == "system") t.role = Role::kSystem;
    else
      throw InputError(r.where + ": field '" + prefix + "from': role '" + from +
                       "' is not one of human, gpt, system (map it with data.sharegpt_role_map, e.g. " + from + ": user)");
    c.turns.push_back(std::move(t));
  }
  return c;
}

// Guanaco with train_on assistant: the text after each "### Assistant:" marker up to the next
// "### Human:" is trained; the markers and the human turns are not.
void add_guanaco_turns(Chunk& target, const std::string& text, const std::string& eos) {
  static const std::string kHuman = "### Human:", kAssistant = "### Assistant:";
  size_t pos = 0;
  bool in_reply = false;
  while (pos < text.size()) {
    if (!in_reply) {
      const size_t a = text.find(kAssistant, pos);
      const size_t end = a == std::string::npos ? text.size() : a + kAssistant.size();
      target.add(std::string_view(text).substr(pos, end - pos), false);
      pos = end;
      in_reply = a != std::string::npos;
    } else {
      const size_t h = text.find(kHuman, pos);
      const size_t end = h == std::string::npos ? text.size() : h;
      target.add(std::string_view(text).substr(pos, end - pos), true);
      pos = end;
      in_reply = false;
    }
  }
  target.add(eos, true);
}

}  // namespace

std::string alpaca_prompt(const std::string& instruction, const std::string& input) {
  if (input.empty())
    return "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
           "### Instruction:\n" + instruction + "\n\n### Response: ";
  return "Below is an instruction that describes a task, paired with an input that provides further context. "
         "Write a response that appropriately completes the request.\n\n"
         "### Instruction:\n" + instruction + "\n\n### Input:\n" + input + "\n\n### Response: ";
}

RenderedRecord render_record(const Record& r, const FormatContext& ctx) {
  const int64_t source_max = ctx.config ? ctx.config->source_max_len : 0;
  const int64_t target_max = ctx.config ? ctx.config->target_max_len : 0;
  const bool all = ctx.train_on == TrainOn::kAll;
  RenderedRecord out;
  auto& chunks = out.example.chunks;
  switch (ctx.format) {
    case DataFormat::kGuanaco: {
      const std::string text = string_field(r, object_of(r), "text", true);
      Chunk source, target;
      source.add(ctx.special.bos, all);
      source.max_tokens = source_max;
      if (ctx.train_on == TrainOn::kAssistant) add_guanaco_turns(target, text, ctx.special.eos);
      else target.add(text + ctx.special.eos, true);
      target.max_tokens = target_max;
      chunks = {std::move(source), std::move(target)};
      break;
    }
    case DataFormat::kAlpaca: {
      const auto& obj = object_of(r);
      const std::string instruction = string_field(r, obj, "instruction", true);
      const std::string input = string_field(r, obj, "input", false);
      const std::string output = string_field(r, obj, "output", true);
      Chunk source, target;
      source.add(ctx.special.bos + alpaca_prompt(instruction, input), all);
      source.max_tokens = source_max;
      target.add(output + ctx.special.eos, true);
      target.max_tokens = target_max;
      chunks = {std::move(source), std::move(target)};
      break;
    }
    case DataFormat::kMessages:
      chunks = {render_chat(ctx.chat, read_messages(r, ctx), ctx.special, ctx.train_on, r.where)};
      break;
    case DataFormat::kShareGpt:
      chunks = {render_chat(ctx.chat, read_sharegpt(r, ctx), ctx.special, ctx.train_on, r.where)};
      break;
    case DataFormat::kText: {
      Chunk c;
      c.add(ctx.special.bos + string_field(r, object_of(r), "text", true) + ctx.special.eos, true);
      chunks = {std::move(c)};
      out.split_to_max_len = true;
      break;
    }
  }
  return out;
}

}  // namespace qtrain
