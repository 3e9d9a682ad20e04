// Dataset formats: one JSON record → a RenderedExample (text chunks with trained spans).
//   guanaco   {"text"}: QLoRA oasst1 (formats.md §4.5): source = BOS (cut to source_max_len), target =
//             text + EOS (cut to target_max_len), the whole target trained; train_on assistant trains
//             only the replies after each "### Assistant:" marker (and the final EOS).
//   alpaca    {"instruction", "input"?, "output"}: QLoRA's Alpaca prompt (with / without input) as
//             the source, output + EOS as the target.
//   messages  {"messages": [{"role", "content": str | [{"type": "text", "text"|"value": str}], "loss_weight"?,
//             "tool_calls"?, ...}], "tools"?}: the messages as the chat template sees them
//   sharegpt  {"conversations": [{"from", "value"}], "tools"?}: human/user, gpt/assistant, system,
//             function_call (→ assistant tool_calls), observation (→ tool), plus DataConfig::sharegpt_role_map.
//   Both render through the run's chat template (chat_template.h); tool data needs a template with
//   tool support (an InputError otherwise).
//   text      {"text"} or a .txt file: BOS + text + EOS, all trained, cut into max_seq_len pieces.
#pragma once

#include <string>

#include "data/dataset/chat_template.h"
#include "data/dataset/data_config.h"
#include "data/dataset/dataset_records.h"
#include "data/dataset/rendered_example.h"

namespace qtrain {

struct FormatContext {
  DataFormat format = DataFormat::kGuanaco;
  TrainOn train_on = TrainOn::kTarget;
  ChatTemplate chat;        // messages, sharegpt
  SpecialText special;      // BOS / EOS as text
  const DataConfig* config = nullptr;
};

struct RenderedRecord {
  RenderedExample example;
  bool split_to_max_len = false;  // format text: cut into max_seq_len pieces instead of truncating
  int64_t unlocated_turns = 0;    // trained chat messages whose text the rendering does not show
  int64_t special_text_in_content = 0;  // special-token strings inside chat message content
};

// Throws InputError "<file>:<line>: <what was expected and found>" for a record the format cannot read.
RenderedRecord render_record(const Record& r, const FormatContext& ctx);

// The Alpaca prompts (QLoRA's wording, including the space after "### Response:").
std::string alpaca_prompt(const std::string& instruction, const std::string& input);

}  // namespace qtrain
