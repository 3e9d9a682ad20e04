#include "data/dataset/data_report.h"

#include <sstream>

namespace qtrain {

void FileCounts::add(const FileCounts& o) {
  records += o.records;
  skipped += o.skipped;
  examples += o.examples;
  dropped_no_labels += o.dropped_no_labels;
  truncated += o.truncated;
  truncated_lost_eos += o.truncated_lost_eos;
  without_trained_eos += o.without_trained_eos;
  tokens += o.tokens;
  label_tokens += o.label_tokens;
  unlocated_turns += o.unlocated_turns;
  special_text_in_content += o.special_text_in_content;
  for (const auto& m : o.skipped_messages)
    if (skipped_messages.size() < 5) skipped_messages.push_back(m);
}

std::vector<std::string> lint(const DataReport& r) {
  std::vector<std::string> out;
  for (const FileCounts* c : {&r.train_files, &r.eval_files}) {
    const std::string which = c == &r.train_files ? "training data" : "eval data";
    if (c->records == 0 && c->skipped == 0) continue;
    if (c->skipped)
      out.push_back("warning: " + which + ": " + std::to_string(c->skipped) + " bad records skipped (data.on_error: skip), e.g. " +
                    (c->skipped_messages.empty() ? std::string("?") : c->skipped_messages.front()));
    if (c->dropped_no_labels)
      out.push_back("warning: " + which + ": " + std::to_string(c->dropped_no_labels) +
                    " examples dropped because nothing is left to train (no trained token after masking and truncation)");
    if (c->truncated)
      out.push_back("note: " + which + ": " + std::to_string(c->truncated) + " examples truncated (" +
                    std::to_string(c->truncated_lost_eos) + " of them lost their trained EOS)");
    if (c->examples > 0 && c->without_trained_eos == c->examples)
      out.push_back("warning: " + which + ": the template never emits a trained EOS (id " +
                    (r.eos_id ? std::to_string(*r.eos_id) : std::string("none")) +
                    "): the model will not learn to stop");
    else if (c->without_trained_eos)
      out.push_back("note: " + which + ": " + std::to_string(c->without_trained_eos) + " untruncated examples have no trained EOS");
    if (c->unlocated_turns)
      out.push_back("warning: " + which + ": " + std::to_string(c->unlocated_turns) +
                    " trained messages could not be located in the chat template's rendering (the template rewrites their "
                    "content); they are not trained");
    if (c->special_text_in_content)
      out.push_back("warning: " + which + ": " + std::to_string(c->special_text_in_content) +
                    " special-token strings typed inside message content (e.g. \"</s>\", \"<|im_start|>\") are parsed as special "
                    "tokens, as transformers does, and teach the model fake turn boundaries: clean the data");
  }
  if (!r.pad_action.empty()) out.push_back("note: " + r.pad_action);
  for (const auto& w : r.warnings) out.push_back("warning: " + w);
  return out;
}

std::string format_report(const DataReport& r) {
  std::ostringstream os;
  auto counts = [&](const char* name, const FileCounts& c) {
    os << name << ": " << c.records << " records, " << c.examples << " examples kept, " << c.skipped << " skipped, "
       << c.dropped_no_labels << " dropped (nothing to train), " << c.truncated << " truncated (" << c.truncated_lost_eos
       << " lost EOS); " << c.tokens << " tokens, " << c.label_tokens << " trained\n";
  };
  os << "format " << r.format << ", template " << r.template_used << "\n";
  counts("train files", r.train_files);
  if (r.eval_files.records) counts("eval files", r.eval_files);
  os << "split: " << r.train_examples << " train examples (after weights), " << r.eval_examples << " eval examples\n";
  os << "token cache: " << r.cache_hits << " hit, " << r.cache_misses << " built\n";
  const auto findings = lint(r);
  if (findings.empty()) os << "linter: no findings\n";
  for (const auto& f : findings) os << "linter " << f << "\n";
  return os.str();
}

}  // namespace qtrain
