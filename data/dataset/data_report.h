// What building a dataset found, and the linter that turns it into findings (run before training and
// by `qtrain data stats`): examples dropped because nothing is left to train, examples truncated (and
// whether their EOS was lost), pad == EOS and what was done, templates that never emit EOS, records
// skipped under on_error: skip.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace qtrain {

// Per data file; stored in the token cache so a cache hit reports the same findings.
struct FileCounts {
  int64_t records = 0;              // records read (blank lines aside)
  int64_t skipped = 0;              // bad records skipped under on_error: skip
  int64_t examples = 0;             // kept examples (a text record may give several pieces)
  int64_t dropped_no_labels = 0;    // nothing left to train after masking and truncation
  int64_t truncated = 0;            // lost tokens to source_max_len / target_max_len / max_seq_len
  int64_t truncated_lost_eos = 0;   // ... and with them the trained EOS
  int64_t without_trained_eos = 0;  // kept, not truncated, yet no trained EOS (the template never emits it)
  int64_t tokens = 0;               // in kept examples
  int64_t label_tokens = 0;         // trained tokens at positions >= 1 (what the loss sees)
  int64_t unlocated_turns = 0;      // trained chat messages the template's rendering does not show (a template that rewrites content)
  int64_t special_text_in_content = 0;  // special-token strings typed inside message content ("</s>", "<|im_start|>")
  std::vector<std::string> skipped_messages;  // the first few, for the summary

  void add(const FileCounts& o);
};

struct DataReport {
  FileCounts train_files;  // summed over data.files
  FileCounts eval_files;   // summed over data.eval_files
  int64_t train_examples = 0;  // after the eval split and file weights
  int64_t eval_examples = 0;
  std::string format, template_used;
  std::optional<int32_t> bos_id, eos_id, pad_id;
  int32_t pad_used = 0;  // the id written into padding
  std::string pad_action;  // what was done about a missing pad or pad == eos
  int64_t cache_hits = 0, cache_misses = 0;
  std::vector<std::string> cache_files;
  std::vector<std::string> warnings;  // cache rebuilt, fallbacks
};

// One line per finding, each starting "warning:" or "note:".
std::vector<std::string> lint(const DataReport& r);

// The counts and the findings as a human-readable block (stats, and the log before training).
std::string format_report(const DataReport& r);

}  // namespace qtrain
