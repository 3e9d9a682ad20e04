#include "data/dataset/chat_template.h"

#include "data/error.h"
#include "data/tokenizer/tokenizer_config.h"

namespace qtrain {
namespace {

// Python's str.strip() / Jinja's trim on the whitespace that occurs in chat data (ASCII and the
// separators U+1C..U+1F that Python also strips).
std::string strip(std::string_view s) {
  auto ws = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f' || (c >= 0x1c && c <= 0x1f); };
  size_t b = 0, e = s.size();
  while (b < e && ws(s[b])) ++b;
  while (e > b && ws(s[e - 1])) --e;
  return std::string(s.substr(b, e - b));
}

// The fingerprints of the official templates: a marker only that family's template writes.
struct Fingerprint {
  const char* marker;
  ChatTemplateName name;
};
constexpr Fingerprint kFingerprints[] = {
    {"<|im_start|>", ChatTemplateName::kChatml},
    {"<|start_header_id|>", ChatTemplateName::kLlama3},
    {"<<SYS>>", ChatTemplateName::kLlama2},
    {"[INST]", ChatTemplateName::kMistral},  // after <<SYS>>: Llama-2's template also writes [INST]
};
constexpr const char* kQwenDefaultSystem = "You are a helpful assistant.";

// chat_template may be a string or a list of {name, template} (then "default" is the one used).
std::optional<std::string> read_chat_template(const std::filesystem::path& cfg_path) {
  if (!std::filesystem::exists(cfg_path)) return std::nullopt;
  const auto j = read_json_file(cfg_path);
  auto it = j.find("chat_template");
  if (it == j.end() || it->is_null()) return std::nullopt;
  if (it->is_string()) return it->get<std::string>();
  if (it->is_array()) {
    for (const auto& t : *it)
      if (t.is_object() && t.value("name", "") == "default" && t.contains("template") && t["template"].is_string())
        return t["template"].get<std::string>();
  }
  throw_bad_key(cfg_path, "chat_template", "a string or a list of {name, template} with a \"default\"", *it);
}

}  // namespace

std::string_view role_name(Role r) {
  switch (r) {
    case Role::kSystem: return "system";
    case Role::kUser: return "user";
    case Role::kAssistant: return "assistant";
  }
  return "?";
}

ChatTemplate resolve_chat_template(ChatTemplateName requested, const std::filesystem::path& model_dir) {
  const auto cfg_path = model_dir / "tokenizer_config.json";
  const auto text = read_chat_template(cfg_path);
  std::optional<ChatTemplate> detected;
  if (text) {
    for (const auto& f : kFingerprints) {
      if (text->find(f.marker) == std::string::npos) continue;
      ChatTemplate t;
      t.name = f.name;
      if (f.name == ChatTemplateName::kChatml && text->find(kQwenDefaultSystem) != std::string::npos)
        t.default_system = kQwenDefaultSystem;
      t.origin = cfg_path.string() + " chat_template (contains " + f.marker + ")";
      detected = t;
      break;
    }
  }
  if (requested != ChatTemplateName::kAuto) {
    if (detected && detected->name == requested) return {requested, detected->default_system, "recipe (matches " + detected->origin + ")"};
    return {requested, "", "recipe"};
  }
  if (detected) return *detected;
  if (text) {
    std::string names;
    for (const auto& [e, n] : chat_template_names())
      if (e != ChatTemplateName::kAuto) names += (names.empty() ? "" : ", ") + n;
    throw UsageError(cfg_path.string() + ": chat_template is not one qtrain knows (no marker of " + names +
                     "); set data.template_name to one of: " + names);
  }
  return {ChatTemplateName::kPlain, "", "no chat_template in " + cfg_path.string() + ": plain template"};
}

std::string generation_prompt(const ChatTemplate& t) {
  switch (t.name) {
    case ChatTemplateName::kLlama3: return "<|start_header_id|>assistant<|end_header_id|>\n\n";
    case ChatTemplateName::kChatml: return "<|im_start|>assistant\n";
    case ChatTemplateName::kLlama2:
    case ChatTemplateName::kMistral:
    case ChatTemplateName::kPlain: return "";
    case ChatTemplateName::kAuto: break;
  }
  throw std::logic_error("generation_prompt: template 'auto' was not resolved (call resolve_chat_template)");
}

Chunk render_chat(const ChatTemplate& t, const Conversation& c, const SpecialText& sp, TrainOn train_on,
                  const std::string& where) {
  if (c.turns.empty()) throw InputError(where + ": conversation has no messages");
  auto trained = [&](const Turn& m) {
    if (train_on == TrainOn::kAll) return true;
    if (m.trained) return *m.trained;
    return m.role == Role::kAssistant;
  };
  const bool train_all = train_on == TrainOn::kAll;
  Chunk out;
  const auto& turns = c.turns;
  const bool has_system = turns[0].role == Role::kSystem;
  for (size_t i = 1; i < turns.size(); ++i)
    if (turns[i].role == Role::kSystem)
      throw InputError(where + ": message " + std::to_string(i) + ": a system message is only allowed first");

  // Llama-2 and Mistral templates require user, assistant, user, ... after the system turn.
  auto check_alternation = [&](const char* name) {
    for (size_t i = has_system ? 1 : 0, k = 0; i < turns.size(); ++i, ++k)
      if ((turns[i].role == Role::kUser) != (k % 2 == 0))
        throw InputError(where + ": message " + std::to_string(i) + ": the " + name +
                         " template needs roles alternating user/assistant/user/... (found " +
                         std::string(role_name(turns[i].role)) + ")");
  };

  switch (t.name) {
    case ChatTemplateName::kLlama2: {
      check_alternation("llama-2");
      for (size_t i = has_system ? 1 : 0; i < turns.size(); ++i) {
        const Turn& m = turns[i];
        std::string content = m.content;
        if (has_system && i == 1) content = "<<SYS>>\n" + turns[0].content + "\n<</SYS>>\n\n" + content;
        if (m.role == Role::kUser) {
          out.add(sp.bos + "[INST] " + strip(content) + " [/INST]", trained(m));
        } else {
          out.add(" " + strip(content) + " " + sp.eos, trained(m));
        }
      }
      break;
    }
    case ChatTemplateName::kMistral: {
      check_alternation("mistral");
      out.add(sp.bos, train_all);
      for (size_t i = has_system ? 1 : 0; i < turns.size(); ++i) {
        const Turn& m = turns[i];
        if (m.role == Role::kUser) {
          // Mistral's v0.1 template has no system role; later ones put it before the first user turn.
          const std::string content = has_system && i == 1 ? turns[0].content + "\n\n" + m.content : m.content;
          out.add("[INST] " + content + " [/INST]", trained(m));
        } else {
          out.add(m.content + sp.eos, trained(m));
        }
      }
      break;
    }
    case ChatTemplateName::kLlama3: {
      out.add(sp.bos, train_all);
      for (const Turn& m : turns) {
        out.add("<|start_header_id|>" + std::string(role_name(m.role)) + "<|end_header_id|>\n\n", train_all);
        out.add(strip(m.content) + "<|eot_id|>", trained(m));
      }
      break;
    }
    case ChatTemplateName::kChatml: {
      if (!has_system && !t.default_system.empty())
        out.add("<|im_start|>system\n" + t.default_system + "<|im_end|>\n", train_all);
      for (const Turn& m : turns) {
        out.add("<|im_start|>" + std::string(role_name(m.role)) + "\n", train_all);
        out.add(m.content + "<|im_end|>", trained(m));
        out.add("\n", train_all);
      }
      break;
    }
    case ChatTemplateName::kPlain: {
      out.add(sp.bos, train_all);
      for (const Turn& m : turns) {
        if (m.role == Role::kAssistant) {
          out.add(m.content + sp.eos, trained(m));
          out.add("\n", train_all);
        } else {
          out.add(m.content + "\n", trained(m));
        }
      }
      break;
    }
    case ChatTemplateName::kAuto:
      throw std::logic_error("render_chat: template 'auto' was not resolved (call resolve_chat_template)");
  }
  return out;
}

}  // namespace qtrain
