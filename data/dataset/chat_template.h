// The chat template a run renders conversations with, and which bytes of the rendering are trained.
//
// Which template (data.chat_template): `auto` renders with the model's own Jinja template
// (chat_template.jinja beside the tokenizer, else tokenizer_config.json's chat_template), exactly as
// transformers' apply_chat_template does (data/jinja/, data/dataset/chat_render.h); only a model with
// none falls back to the built-in `plain` template, and the report says so. A built-in name (llama-2,
// llama-3, chatml, mistral, plain: the official Jinja text of each) or a path to a .jinja file
// overrides the model's. data.template_vars are extra template variables; strftime_now sees one fixed
// time per run (ChatTemplate::now).
//
// Which bytes are trained, by character offsets in the rendered text (never by re-tokenizing):
//   - the template has {% generation %} blocks: exactly their output (transformers'
//     return_assistant_tokens_mask);
//   - otherwise a trained message i spans from the end of the rendering of messages[:i] (with the
//     generation prompt for an assistant message: the header is not trained) to the end of the
//     rendering of messages[:i+1], less trailing whitespace after the turn's closing tag: the
//     content, what the template writes around it inside the turn (a tool call, reasoning) and the
//     end-of-turn text (</s>, <|im_end|>, <|eot_id|>: trained, so the model learns to stop);
//   - a template whose prefix renderings are not prefixes of the whole (one that moves the system
//     prompt to the last user turn, or drops old reasoning) is located by the message's content
//     instead: the content as rendered (or stripped), through the EOS token right after it; a message
//     that cannot be located is not trained and counted (the linter warns).
#pragma once

#include <ctime>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/dataset/data_config.h"
#include "data/dataset/rendered_example.h"
#include "data/jinja/template.h"

namespace qtrain {

// The role tokens as text ("<s>", "</s>"); empty when the tokenizer has none (guanaco, alpaca, text).
struct SpecialText {
  std::string bos, eos;
};

struct ChatTemplate {
  std::shared_ptr<const jinja::Template> tmpl;
  std::string source;  // the Jinja text (hashed into the token cache key)
  std::string name;    // "model", a built-in name, or the .jinja path
  std::string origin;  // for the log: where the text came from
  std::map<std::string, std::string> special_tokens;  // bos_token, eos_token, ... as the template sees them
  nlohmann::ordered_json vars = nlohmann::ordered_json::object();  // data.template_vars
  std::tm now{};                                                   // what strftime_now formats
};

// The Jinja text of a built-in template (llama-2, llama-3, chatml, mistral, plain), as published.
const std::string& builtin_template_source(ChatTemplateName name);

// Resolves `spec` ("auto", a built-in name, or a path to a .jinja file) for a model directory.
// UsageError naming `key` for an unknown name or a missing file; TemplateError for a template that
// does not parse. `vars` are extra variables, `now` the clock.
ChatTemplate resolve_chat_template(const std::string& spec, const std::filesystem::path& model_dir,
                                   const nlohmann::ordered_json& vars, const std::tm& now, const std::string& key = "data.chat_template");
// The recipe's choice: data.chat_template, or data.template_name when that is empty.
std::string chat_template_spec(const DataConfig& c);
// data.template_vars as JSON (each value is JSON text; a value that does not parse is a string).
nlohmann::ordered_json template_vars_json(const DataConfig& c);

// A conversation in the template's terms: the messages as the template sees them (role, content,
// tool_calls, ...), which of them are trained by a per-message loss_weight (unset: decided by
// train_on), and the tools offered (null: none).
struct Conversation {
  nlohmann::ordered_json messages = nlohmann::ordered_json::array();
  std::vector<std::optional<bool>> trained;  // one per message
  nlohmann::ordered_json tools;
};

// What rendering found that the linter reports.
struct RenderStats {
  int64_t unlocated_turns = 0;  // trained messages whose text could not be found in the rendering
};

// Renders a conversation as one chunk with trained spans (see the header comment). Assistant messages
// are trained under kTarget / kAssistant, everything under kAll; Conversation::trained overrides.
// InputError starting with `where` when the template refuses the conversation (raise_exception) or
// fails on it.
Chunk render_chat(const ChatTemplate& t, const Conversation& c, TrainOn train_on, const std::string& where,
                  RenderStats* stats = nullptr);

// The text transformers' apply_chat_template(messages, add_generation_prompt=True) gives: the
// conversation and the cue for the assistant's answer (qtrain generate).
std::string render_prompt(const ChatTemplate& t, const nlohmann::ordered_json& messages, const std::string& where);

}  // namespace qtrain
