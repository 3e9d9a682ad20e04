#include "data/dataset/chat_render.h"

#include <fstream>
#include <sstream>

#include "data/error.h"
#include "data/jinja/json.h"

namespace qtrain {
namespace {

std::string read_text(const std::filesystem::path& p) {
  std::ifstream f(p, std::ios::binary);
  if (!f) throw InputError(p.string() + ": cannot read the file");
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::optional<nlohmann::ordered_json> read_json(const std::filesystem::path& p) {
  if (!std::filesystem::exists(p)) return std::nullopt;
  try {
    return nlohmann::ordered_json::parse(read_text(p));
  } catch (const nlohmann::json::exception& e) {
    throw InputError(p.string() + ": not valid JSON: " + e.what());
  }
}

constexpr const char* kSpecialTokenKeys[] = {"bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"};

// The reasoning of an assistant turn is passed under several names; transformers fills both
// `reasoning_content` and `thinking` from the first one set ({"thinking": r, **message, "reasoning_content": r}).
nlohmann::ordered_json alias_reasoning(const nlohmann::ordered_json& m) {
  const nlohmann::ordered_json* reasoning = nullptr;
  for (const char* k : {"reasoning_content", "thinking", "reasoning"}) {
    auto it = m.find(k);
    if (it != m.end() && !it->is_null()) {
      reasoning = &*it;
      break;
    }
  }
  if (!reasoning) return m;
  nlohmann::ordered_json out = nlohmann::ordered_json::object();
  out["thinking"] = *reasoning;
  for (auto it = m.begin(); it != m.end(); ++it) out[it.key()] = it.value();
  out["reasoning_content"] = *reasoning;
  return out;
}

}  // namespace

std::optional<TemplateSource> find_model_template(const std::filesystem::path& model_dir) {
  const auto jinja_file = model_dir / "chat_template.jinja";
  if (std::filesystem::exists(jinja_file)) return read_template_file(jinja_file);
  const auto cfg_path = model_dir / "tokenizer_config.json";
  const auto cfg = read_json(cfg_path);
  if (!cfg || !cfg->is_object()) return std::nullopt;
  auto it = cfg->find("chat_template");
  if (it == cfg->end() || it->is_null()) return std::nullopt;
  const std::string origin = cfg_path.string() + " chat_template";
  if (it->is_string()) return TemplateSource{it->get<std::string>(), origin};
  if (it->is_array()) {
    for (const auto& t : *it)
      if (t.is_object() && t.value("name", "") == "default" && t.contains("template") && t["template"].is_string())
        return TemplateSource{t["template"].get<std::string>(), origin + " (\"default\")"};
  }
  throw InputError(cfg_path.string() + ": chat_template: expected a string or a list of {name, template} with a \"default\", found " +
                   std::string(it->type_name()));
}

TemplateSource read_template_file(const std::filesystem::path& path) {
  if (!std::filesystem::is_regular_file(path)) throw UsageError(path.string() + ": no such template file");
  return TemplateSource{read_text(path), path.string()};
}

std::map<std::string, std::string> read_special_tokens(const std::filesystem::path& model_dir) {
  std::map<std::string, std::string> out;
  for (const char* file : {"tokenizer_config.json", "special_tokens_map.json"}) {
    const auto path = model_dir / file;
    const auto j = read_json(path);
    if (!j || !j->is_object()) continue;
    for (const char* key : kSpecialTokenKeys) {
      if (out.count(key)) continue;
      auto it = j->find(key);
      if (it == j->end() || it->is_null()) continue;
      if (it->is_string()) out[key] = it->get<std::string>();
      else if (it->is_object() && it->contains("content") && (*it)["content"].is_string()) out[key] = (*it)["content"].get<std::string>();
      else throw InputError(path.string() + ": " + key + ": expected a string or {\"content\": ...}, found " + std::string(it->type_name()));
    }
  }
  return out;
}

jinja::Dict chat_template_vars(const ChatInput& input, const std::map<std::string, std::string>& special_tokens,
                               const nlohmann::ordered_json& extra_vars, const std::string& where) {
  if (!input.messages.is_array()) throw InputError(where + ": messages must be a list");
  nlohmann::ordered_json messages = nlohmann::ordered_json::array();
  for (size_t i = 0; i < input.messages.size(); ++i) {
    const auto& m = input.messages[i];
    if (!m.is_object()) throw InputError(where + ": message " + std::to_string(i) + " is not an object");
    nlohmann::ordered_json kept = nlohmann::ordered_json::object();
    for (auto it = m.begin(); it != m.end(); ++it)
      if (!it.value().is_null()) kept[it.key()] = it.value();  // apply_chat_template drops null-valued keys
    messages.push_back(alias_reasoning(kept));
  }
  jinja::Dict vars;
  for (const auto& [k, v] : special_tokens) vars.set(k, jinja::Value(v));
  vars.set("messages", jinja::from_json(messages));
  vars.set("tools", input.tools.is_null() ? jinja::Value(jinja::None{}) : jinja::from_json(input.tools));
  vars.set("documents", jinja::Value(jinja::None{}));
  vars.set("add_generation_prompt", jinja::Value(input.add_generation_prompt));
  if (extra_vars.is_object())
    for (auto it = extra_vars.begin(); it != extra_vars.end(); ++it) vars.set(it.key(), jinja::from_json(it.value()));
  return vars;
}

}  // namespace qtrain
