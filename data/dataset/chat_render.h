// A model's own chat template and the variables transformers' apply_chat_template gives it, so that
// qtrain renders conversations byte for byte as transformers (and vLLM) do:
//   - where the template comes from: chat_template.jinja beside the tokenizer (it wins, as in
//     transformers), else tokenizer_config.json's chat_template (a string, or a list of {name, template}
//     whose "default" is used), else none;
//   - the variables: messages (keys whose value is null dropped; a reasoning field aliased as
//     `reasoning_content` and `thinking`), tools (null when absent), documents (null),
//     add_generation_prompt, the named special tokens of the tokenizer (bos_token, eos_token, unk_token,
//     pad_token, sep_token, cls_token, mask_token: transformers' special_tokens_map), then the recipe's
//     extra variables, which override them.
#pragma once

#include <ctime>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "data/jinja/template.h"

namespace qtrain {

struct TemplateSource {
  std::string text;    // the Jinja source
  std::string origin;  // "<dir>/chat_template.jinja", "<dir>/tokenizer_config.json chat_template", a .jinja path
};

// The model directory's own template, or nullopt when it has none. InputError naming the file for a
// chat_template of the wrong type.
std::optional<TemplateSource> find_model_template(const std::filesystem::path& model_dir);
// A .jinja file as it is (no newline added or removed).
TemplateSource read_template_file(const std::filesystem::path& path);

// The tokenizer's named special tokens as text (tokenizer_config.json, then special_tokens_map.json for
// those it lacks; an AddedToken object gives its "content"). Empty for a directory without them.
std::map<std::string, std::string> read_special_tokens(const std::filesystem::path& model_dir);

// One conversation as the template sees it. `messages` is a JSON list of message objects; `tools` a
// JSON list or null.
struct ChatInput {
  nlohmann::ordered_json messages = nlohmann::ordered_json::array();
  nlohmann::ordered_json tools;  // null: none
  bool add_generation_prompt = false;
};

// The variables of one rendering, transformers' way (see the header comment). InputError starting
// with `where` when a message is not an object.
jinja::Dict chat_template_vars(const ChatInput& input, const std::map<std::string, std::string>& special_tokens,
                               const nlohmann::ordered_json& extra_vars, const std::string& where);

}  // namespace qtrain
