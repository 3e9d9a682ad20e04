#include "data/dataset/dataset_formats.h"

#include <cstdio>

#include "data/error.h"

namespace qtrain {
namespace {

std::string shown(const nlohmann::ordered_json& v) {
  std::string s = v.dump();
  return s.size() > 60 ? s.substr(0, 57) + "..." : s;
}

[[noreturn]] void bad_field(const Record& r, const std::string& field, const std::string& expected, const nlohmann::ordered_json* found) {
  if (!found) throw InputError(r.where + ": missing field '" + field + "' (expected " + expected + ")");
  throw InputError(r.where + ": field '" + field + "': expected " + expected + ", found " + found->type_name() + " " + shown(*found));
}

const nlohmann::ordered_json& object_of(const Record& r) {
  if (!r.value.is_object()) throw InputError(r.where + ": expected a JSON object, found " + std::string(r.value.type_name()) + " " + shown(r.value));
  return r.value;
}

std::string string_field(const Record& r, const nlohmann::ordered_json& obj, const std::string& field, bool required,
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
std::string message_content(const Record& r, const nlohmann::ordered_json& m, const std::string& prefix) {
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

// The record's "tools": a list of function schemas, or that list as a JSON string (ShareGPT tool data),
// each as OpenAI's {"type": "function", "function": {...}} (what templates and get_json_schema use).
nlohmann::ordered_json read_tools(const Record& r, const nlohmann::ordered_json& obj) {
  auto it = obj.find("tools");
  if (it == obj.end() || it->is_null()) return nullptr;
  nlohmann::ordered_json list = *it;
  if (it->is_string()) {
    if (it->get<std::string>().empty()) return nullptr;
    list = nlohmann::ordered_json::parse(it->get<std::string>(), nullptr, false);
    if (list.is_discarded()) bad_field(r, "tools", "a list of function schemas (or that list as a JSON string)", &*it);
  }
  if (!list.is_array()) bad_field(r, "tools", "a list of function schemas (or that list as a JSON string)", &*it);
  nlohmann::ordered_json out = nlohmann::ordered_json::array();
  for (const auto& t : list) {
    if (!t.is_object()) bad_field(r, "tools", "a list of function schemas (objects)", &t);
    if (t.contains("function") && t["function"].is_object()) out.push_back(t);  // already {"type": "function", "function": {...}}
    else out.push_back({{"type", "function"}, {"function", t}});
  }
  return out;
}

// A tool call written as text ({"name": ..., "arguments": {...} | "..."}) as a tool_calls entry with
// a 9-character id (Mistral's templates require one); `n` numbers the calls of a conversation.
nlohmann::ordered_json tool_call_from_text(const Record& r, const std::string& field, const std::string& text, size_t n) {
  const auto j = nlohmann::ordered_json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object() || !j.contains("name") || !j["name"].is_string())
    throw InputError(r.where + ": field '" + field + "': a function_call must be JSON {\"name\": ..., \"arguments\": {...}}");
  nlohmann::ordered_json args = j.contains("arguments") ? j["arguments"] : nlohmann::ordered_json::object();
  if (args.is_string()) {
    auto parsed = nlohmann::ordered_json::parse(args.get<std::string>(), nullptr, false);
    if (!parsed.is_discarded() && parsed.is_object()) args = parsed;
  }
  char id[16];
  std::snprintf(id, sizeof id, "call%05zu", n % 100000);
  return {{"type", "function"}, {"id", id}, {"function", {{"name", j["name"]}, {"arguments", args}}}};
}

// Messages pass through to the template as they are (role, content, tool_calls, tool_call_id, name,
// reasoning_content, ...): content parts are joined into text and loss_weight becomes the trained flag.
Conversation read_messages(const Record& r, const FormatContext& ctx) {
  const auto& obj = object_of(r);
  auto it = obj.find("messages");
  if (it == obj.end()) bad_field(r, "messages", "a list of {role, content}", nullptr);
  if (!it->is_array()) bad_field(r, "messages", "a list of {role, content}", &*it);
  Conversation c;
  c.tools = read_tools(r, obj);
  for (size_t i = 0; i < it->size(); ++i) {
    const auto& m = (*it)[i];
    const std::string prefix = "messages[" + std::to_string(i) + "].";
    if (!m.is_object()) bad_field(r, "messages[" + std::to_string(i) + "]", "an object {role, content}", &m);
    const std::string role = string_field(r, m, "role", true, prefix);
    const bool has_calls = m.contains("tool_calls") && !m["tool_calls"].is_null();
    // The message as written (key order kept), with text parts joined and loss_weight taken out.
    nlohmann::ordered_json msg = m;
    if (!(has_calls && (!m.contains("content") || m["content"].is_null()))) msg["content"] = message_content(r, m, prefix);
    msg.erase("loss_weight");
    std::optional<bool> trained;
    if (auto lw = m.find("loss_weight"); lw != m.end() && !lw->is_null()) {
      if (!lw->is_number()) bad_field(r, prefix + "loss_weight", "a number (0 = not trained)", &*lw);
      const double w = lw->get<double>();
      if (w != 0.0 && w != 1.0) bad_field(r, prefix + "loss_weight", "0 or 1 (labels are a mask; fractional weights are not supported)", &*lw);
      // A weight keeps the recipe's train_on meaning for assistant turns; it can only turn training off,
      // or on for a non-assistant turn under train_on target.
      trained = w != 0.0;
    }
    c.messages.push_back(std::move(msg));
    c.trained.push_back(trained);
  }
  (void)ctx;
  return c;
}

// ShareGPT roles: human/user, gpt/assistant, system, and the tool roles of ShareGPT tool data:
// function_call (an assistant turn whose value is the call as JSON: becomes tool_calls) and
// observation (the tool's result: a `tool` message answering the last call). data.sharegpt_role_map
// renames roles first (observation: user renders tool results as user turns in a template without
// tool support).
Conversation read_sharegpt(const Record& r, const FormatContext& ctx) {
  const auto& obj = object_of(r);
  auto it = obj.find("conversations");
  if (it == obj.end()) bad_field(r, "conversations", "a list of {from, value}", nullptr);
  if (!it->is_array()) bad_field(r, "conversations", "a list of {from, value}", &*it);
  Conversation c;
  c.tools = read_tools(r, obj);
  nlohmann::ordered_json last_call;
  for (size_t i = 0; i < it->size(); ++i) {
    const auto& m = (*it)[i];
    const std::string prefix = "conversations[" + std::to_string(i) + "].";
    if (!m.is_object()) bad_field(r, "conversations[" + std::to_string(i) + "]", "an object {from, value}", &m);
    std::string from = string_field(r, m, "from", true, prefix);
    const std::string value = string_field(r, m, "value", true, prefix);
    if (ctx.config) {
      if (auto mapped = ctx.config->sharegpt_role_map.find(from); mapped != ctx.config->sharegpt_role_map.end()) from = mapped->second;
    }
    nlohmann::ordered_json msg = nlohmann::ordered_json::object();
    if (from == "human" || from == "user") msg = {{"role", "user"}, {"content", value}};
    else if (from == "gpt" || from == "assistant") msg = {{"role", "assistant"}, {"content", value}};
    else if (from == "system") msg = {{"role", "system"}, {"content", value}};
    else if (from == "function_call") {
      last_call = tool_call_from_text(r, prefix + "value", value, i);
      msg = {{"role", "assistant"}, {"content", ""}, {"tool_calls", nlohmann::ordered_json::array({last_call})}};
    } else if (from == "observation" || from == "tool") {
      msg = {{"role", "tool"}, {"content", value}};
      if (!last_call.is_null()) {
        msg["tool_call_id"] = last_call["id"];
        msg["name"] = last_call["function"]["name"];
      }
    } else {
      throw InputError(r.where + ": field '" + prefix + "from': role '" + from +
                       "' is not one of human, gpt, system, function_call, observation (map it with data.sharegpt_role_map, e.g. " + from +
                       ": user)");
    }
    c.messages.push_back(std::move(msg));
    c.trained.emplace_back();
  }
  return c;
}

// Special-token strings typed inside contents: the tokenizer's named special tokens and anything
// spelled like a chat control token ("<|...|>").
int64_t count_special_text(const ChatTemplate& t, const Conversation& c) {
  int64_t n = 0;
  for (const auto& m : c.messages) {
    if (!m.contains("content") || !m["content"].is_string()) continue;
    const std::string& s = m["content"].get_ref<const std::string&>();
    for (const auto& [k, tok] : t.special_tokens)
      for (size_t at = tok.empty() ? std::string::npos : s.find(tok); at != std::string::npos; at = s.find(tok, at + tok.size())) ++n;
    for (size_t at = s.find("<|"); at != std::string::npos; at = s.find("<|", at + 2)) {
      const size_t close = s.find("|>", at + 2);
      if (close == std::string::npos || close - at >= 40 || s.find_first_of(" \n", at) < close) continue;
      const std::string tok = s.substr(at, close + 2 - at);
      bool named = false;  // already counted above
      for (const auto& [k, v] : t.special_tokens) named = named || v == tok;
      n += !named;
    }
  }
  return n;
}

// Tool calls need a template that reads them; otherwise say so instead of rendering something else.
void require_tool_support(const Record& r, const FormatContext& ctx, const Conversation& c) {
  bool tools = false;  // offered tools alone are fine: a template without tool support ignores them, as in transformers
  for (const auto& m : c.messages) tools = tools || m.contains("tool_calls") || m.value("role", "") == "tool";
  if (!tools || !ctx.chat.tmpl) return;
  if (ctx.chat.source.find("tool") == std::string::npos)
    throw InputError(r.where + ": the conversation has tool calls or tool results but the chat template (" + ctx.chat.origin +
                     ") has no tool support; use a template that has (data.chat_template), or map the roles to plain turns with "
                     "data.sharegpt_role_map (function_call: assistant, observation: user)");
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
    case DataFormat::kShareGpt: {
      if (!ctx.chat.tmpl) throw std::logic_error("render_record: chat formats need FormatContext::chat resolved");
      const Conversation c = ctx.format == DataFormat::kMessages ? read_messages(r, ctx) : read_sharegpt(r, ctx);
      require_tool_support(r, ctx, c);
      RenderStats stats;
      chunks = {render_chat(ctx.chat, c, ctx.train_on, r.where, &stats)};
      out.unlocated_turns = stats.unlocated_turns;
      out.special_text_in_content = count_special_text(ctx.chat, c);
      break;
    }
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
