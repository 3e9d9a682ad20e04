#include "data/dataset/chat_template.h"

#include "data/dataset/chat_render.h"
#include "data/error.h"
#include "data/jinja/error.h"
#include "data/jinja/py_string.h"

namespace qtrain {
namespace {

// The official texts: Meta's Llama-2-chat, Meta's Llama-3-Instruct, the canonical ChatML, Mistral-7B-
// Instruct-v0.1 (its first revision, without a system role), and qtrain's plain (content lines,
// each reply ending with EOS).
const char* const kLlama2 =
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}"
    "{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}";
const char* const kLlama3 =
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";
const char* const kChatml =
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
const char* const kMistral =
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}";
const char* const kPlain =
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'assistant' %}{{ m['content'] + eos_token + '\n' }}"
    "{% else %}{{ m['content'] + '\n' }}{% endif %}{% endfor %}";

jinja::RenderResult render(const ChatTemplate& t, const nlohmann::ordered_json& messages, const nlohmann::ordered_json& tools,
                           bool add_generation_prompt, const std::string& where) {
  ChatInput in;
  in.messages = messages;
  in.tools = tools;
  in.add_generation_prompt = add_generation_prompt;
  try {
    return t.tmpl->render(chat_template_vars(in, t.special_tokens, t.vars, where), t.now);
  } catch (const jinja::TemplateRaised& e) {
    throw InputError(where + ": the chat template refuses this conversation: " + e.raised() + " (" + t.origin + ")");
  } catch (const jinja::TemplateError& e) {
    throw InputError(where + ": the chat template failed on this conversation: " + e.what());
  }
}

bool trained_message(const Conversation& c, size_t i, TrainOn train_on) {
  if (train_on == TrainOn::kAll) return true;
  if (i < c.trained.size() && c.trained[i]) return *c.trained[i];
  return c.messages[i].value("role", "") == "assistant";
}

// The end of a trained turn: whitespace after the turn's closing tag (a special token such as
// "<|im_end|>", or any text ending in '>') is the template's separator between turns, not part of
// what the model says.
size_t trim_turn_end(const std::string& text, size_t begin, size_t end) {
  size_t e = end;
  while (e > begin && (text[e - 1] == '\n' || text[e - 1] == ' ' || text[e - 1] == '\t' || text[e - 1] == '\r')) --e;
  return e > begin && e < end && text[e - 1] == '>' ? e : end;
}

}  // namespace

const std::string& builtin_template_source(ChatTemplateName name) {
  static const std::string llama2 = kLlama2, llama3 = kLlama3, chatml = kChatml, mistral = kMistral, plain = kPlain;
  switch (name) {
    case ChatTemplateName::kLlama2: return llama2;
    case ChatTemplateName::kLlama3: return llama3;
    case ChatTemplateName::kChatml: return chatml;
    case ChatTemplateName::kMistral: return mistral;
    case ChatTemplateName::kPlain: return plain;
    case ChatTemplateName::kAuto: break;
  }
  throw std::logic_error("builtin_template_source: 'auto' is not a template");
}

std::string chat_template_spec(const DataConfig& c) { return c.chat_template.empty() ? to_string(c.template_name) : c.chat_template; }

nlohmann::ordered_json template_vars_json(const DataConfig& c) {
  nlohmann::ordered_json vars = nlohmann::ordered_json::object();
  for (const auto& [k, v] : c.template_vars) {
    auto parsed = nlohmann::ordered_json::parse(v, nullptr, /*allow_exceptions=*/false);
    vars[k] = parsed.is_discarded() ? nlohmann::ordered_json(v) : parsed;
  }
  return vars;
}

ChatTemplate resolve_chat_template(const std::string& spec, const std::filesystem::path& model_dir,
                                   const nlohmann::ordered_json& vars, const std::tm& now, const std::string& key) {
  ChatTemplate t;
  t.vars = vars;
  t.now = now;
  t.special_tokens = read_special_tokens(model_dir);
  std::optional<ChatTemplateName> builtin;
  for (const auto& [e, n] : chat_template_names())
    if (n == spec) builtin = e;
  if (builtin == ChatTemplateName::kAuto) {
    if (auto own = find_model_template(model_dir)) {
      t.source = own->text;
      t.name = "model";
      t.origin = own->origin;
    } else {
      t.source = builtin_template_source(ChatTemplateName::kPlain);
      t.name = "plain";
      t.origin = "built-in plain: " + model_dir.string() + " has no chat template (no chat_template.jinja, no chat_template in tokenizer_config.json)";
    }
  } else if (builtin) {
    t.source = builtin_template_source(*builtin);
    t.name = spec;
    t.origin = "built-in " + spec + " (" + key + ")";
  } else if (spec.size() > 6 && spec.substr(spec.size() - 6) == ".jinja") {
    if (!std::filesystem::is_regular_file(spec)) throw UsageError(key + ": template file '" + spec + "' does not exist");
    const TemplateSource s = read_template_file(spec);
    t.source = s.text;
    t.name = spec;
    t.origin = spec + " (" + key + ")";
  } else {
    std::string names;
    for (const auto& [e, n] : chat_template_names()) names += (names.empty() ? "" : ", ") + n;
    throw UsageError(key + ": '" + spec + "' is not one of: " + names + ", or a path to a .jinja file");
  }
  t.tmpl = std::make_shared<const jinja::Template>(t.source, t.origin);
  return t;
}

Chunk render_chat(const ChatTemplate& t, const Conversation& c, TrainOn train_on, const std::string& where, RenderStats* stats) {
  if (c.messages.empty()) throw InputError(where + ": conversation has no messages");
  const jinja::RenderResult full = render(t, c.messages, c.tools, false, where);
  const std::string& text = full.text;
  Chunk out;
  if (train_on == TrainOn::kAll) {
    out.add(text, true);
    return out;
  }
  // Trained byte ranges, in order, then turned into spans.
  std::vector<std::pair<size_t, size_t>> ranges;
  if (t.tmpl->has_generation()) {
    ranges = full.generation;
  } else {
    size_t cursor = 0;  // the fallback search continues after the last located turn
    for (size_t i = 0; i < c.messages.size(); ++i) {
      if (!trained_message(c, i, train_on)) continue;
      const bool assistant = c.messages[i].value("role", "") == "assistant";
      auto prefix = nlohmann::ordered_json::array();
      for (size_t k = 0; k < i; ++k) prefix.push_back(c.messages[k]);
      auto upto = prefix;
      upto.push_back(c.messages[i]);
      std::optional<std::pair<size_t, size_t>> range;
      try {
        const std::string before = prefix.empty() && !assistant ? std::string() : render(t, prefix, c.tools, assistant, where).text;
        const std::string after = render(t, upto, c.tools, false, where).text;
        if (text.compare(0, before.size(), before) == 0 && text.compare(0, after.size(), after) == 0 && after.size() >= before.size())
          range = std::make_pair(before.size(), trim_turn_end(text, before.size(), after.size()));
      } catch (const InputError&) {
        // A prefix the template refuses (it wants the conversation to end with a user turn): use the content.
      }
      if (!range) {
        // Locate the content as rendered, or stripped (templates trim), through an EOS right after it.
        const auto& content = c.messages[i].contains("content") && c.messages[i]["content"].is_string()
                                  ? c.messages[i]["content"].get_ref<const std::string&>()
                                  : std::string();
        const std::string stripped = jinja::py::strip(content, std::nullopt, true, true);
        for (const std::string& needle : {content, stripped}) {
          if (needle.empty()) continue;
          const size_t at = text.find(needle, cursor);
          if (at == std::string::npos) continue;
          size_t end = at + needle.size();
          auto eos = t.special_tokens.find("eos_token");
          if (eos != t.special_tokens.end() && !eos->second.empty()) {
            size_t k = end;
            while (k < text.size() && (text[k] == ' ' || text[k] == '\n')) ++k;
            if (text.compare(k, eos->second.size(), eos->second) == 0) end = k + eos->second.size();
          }
          range = std::make_pair(at, end);
          break;
        }
      }
      if (!range) {
        if (stats) ++stats->unlocated_turns;
        continue;
      }
      if (range->first < cursor) range->first = cursor;
      if (range->second > range->first) ranges.push_back(*range);
      cursor = std::max(cursor, range->second);
    }
  }
  size_t pos = 0;
  for (const auto& [b, e] : ranges) {
    if (b < pos || e > text.size()) continue;
    out.add(std::string_view(text).substr(pos, b - pos), false);
    out.add(std::string_view(text).substr(b, e - b), true);
    pos = e;
  }
  out.add(std::string_view(text).substr(pos), false);
  return out;
}

std::string render_prompt(const ChatTemplate& t, const nlohmann::ordered_json& messages, const std::string& where) {
  return render(t, messages, nullptr, true, where).text;
}

}  // namespace qtrain
