#include "trainer/run_data_report.h"

#include <algorithm>
#include <limits>

#include "data/dataset/example_set.h"
#include "data/io/atomic_file.h"

namespace qtrain {
namespace {

nlohmann::ordered_json counts_json(const FileCounts& c) {
  return {{"records", c.records}, {"skipped", c.skipped}, {"examples", c.examples}, {"dropped_no_labels", c.dropped_no_labels},
          {"truncated", c.truncated}, {"truncated_lost_eos", c.truncated_lost_eos}, {"without_trained_eos", c.without_trained_eos},
          {"tokens", c.tokens}, {"label_tokens", c.label_tokens}, {"skipped_messages", c.skipped_messages}};
}

}  // namespace

nlohmann::ordered_json data_report_json(const DataReport& r, const ExampleSet* train) {
  nlohmann::ordered_json j;
  j["train"] = counts_json(r.train_files);
  j["eval"] = counts_json(r.eval_files);
  j["train_examples"] = r.train_examples;
  j["eval_examples"] = r.eval_examples;
  j["format"] = r.format;
  j["template"] = r.template_used;
  j["pad_action"] = r.pad_action;
  j["cache"] = {{"hits", r.cache_hits}, {"misses", r.cache_misses}};
  j["findings"] = lint(r);
  j["warnings"] = r.warnings;
  if (train) {
    // 16 equal-width buckets from the shortest to the longest example: the shape of the lengths
    // (how much max_seq_len cuts, how uneven batches are) at the scale the data has.
    int64_t min_len = train->size() ? std::numeric_limits<int64_t>::max() : 0, max_len = 0, total = 0;
    for (int64_t i = 0; i < train->size(); ++i) {
      min_len = std::min(min_len, train->length(i));
      max_len = std::max(max_len, train->length(i));
      total += train->length(i);
    }
    const int64_t width = std::max<int64_t>(1, (max_len - min_len + 16) / 16);
    std::vector<int64_t> buckets(static_cast<size_t>((max_len - min_len) / width + 1), 0);
    for (int64_t i = 0; i < train->size(); ++i) ++buckets[static_cast<size_t>((train->length(i) - min_len) / width)];
    auto& h = j["length_histogram"] = nlohmann::ordered_json::array();
    if (train->size())
      for (size_t b = 0; b < buckets.size(); ++b)
        h.push_back({{"min", min_len + static_cast<int64_t>(b) * width}, {"max", min_len + static_cast<int64_t>(b + 1) * width - 1},
                     {"count", buckets[b]}});
    j["lengths"] = {{"examples", train->size()}, {"mean", train->size() ? static_cast<double>(total) / static_cast<double>(train->size()) : 0.0},
                    {"max", max_len}};
  }
  return j;
}

void write_data_report(const std::filesystem::path& file, const DataReport& report, const ExampleSet* train) {
  write_file_atomic(file, data_report_json(report, train).dump(1) + "\n");
}

}  // namespace qtrain
