// Built-in chat templates (llama-2, llama-3, chatml, mistral, plain) rendered natively, token-for-token
// what transformers' apply_chat_template gives with the official Jinja text of each (checked by
// tests/oracle/test_chat_templates.py), plus which bytes are trained. "auto" picks the template from
// the model's tokenizer_config.json chat_template by fingerprint; an unknown template is an error, never
// a silent fallback. A model with no chat_template at all (a base model) gets the plain template.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "data/dataset/data_config.h"
#include "data/dataset/rendered_example.h"

namespace qtrain {

enum class Role { kSystem, kUser, kAssistant };

struct Turn {
  Role role;
  std::string content;
  std::optional<bool> trained;  // from a per-message loss_weight; unset = decided by TrainOn
};

struct Conversation {
  std::vector<Turn> turns;
};

// The role tokens as text ("<s>", "</s>"); empty when the tokenizer has none.
struct SpecialText {
  std::string bos, eos;
};

struct ChatTemplate {
  ChatTemplateName name = ChatTemplateName::kPlain;  // never kAuto after resolve_chat_template
  // chatml only: the system turn Qwen2's template inserts when a conversation has none.
  std::string default_system;
  std::string origin;  // for the report: "recipe" or "tokenizer_config.json chat_template (<fingerprint>)"
};

// Resolves kAuto from model_dir/tokenizer_config.json (UsageError naming the file when its
// chat_template is not one qtrain knows). A named template still takes the model's details (the
// default system prompt) when the model's own template is the same one.
ChatTemplate resolve_chat_template(ChatTemplateName requested, const std::filesystem::path& model_dir);

// Renders a conversation as one chunk with trained spans: assistant turns (content and the
// end-of-turn token) under kTarget/kAssistant, everything under kAll; Turn::trained overrides.
// Throws InputError starting with `where` for a conversation the template cannot express
// (llama-2/mistral need user/assistant alternation; a system turn only first).
Chunk render_chat(const ChatTemplate& t, const Conversation& c, const SpecialText& special, TrainOn train_on,
                  const std::string& where);

// What transformers' apply_chat_template(add_generation_prompt=True) appends after a conversation so
// the model answers as the assistant (qtrain generate): the assistant header for llama-3 and chatml;
// nothing for llama-2, mistral and plain, whose templates ignore the flag (a user turn already ends
// with the cue: " [/INST]", "\n").
std::string generation_prompt(const ChatTemplate& t);

std::string_view role_name(Role r);

}  // namespace qtrain
