#include "export/calibration.h"

#include <algorithm>
#include <map>

#include "data/dataset/shuffle.h"
#include "data/error.h"

namespace qtrain {

int64_t CalibrationSet::tokens() const {
  int64_t n = 0;
  for (const auto& c : counts) n += c.sum().item<int64_t>();
  return n;
}

CalibrationSet calibration_from_examples(const ExampleSet& data, const CalibrationOptions& opts, std::string source) {
  CalibrationSet out;
  out.source = std::move(source);
  // The same examples on every platform for one seed.
  for (int64_t i : permutation(data.size(), opts.seed)) {
    if (static_cast<int64_t>(out.ids.size()) >= opts.samples) break;
    const ExampleView e = data.at(i);
    const int64_t len = std::min<int64_t>(static_cast<int64_t>(e.ids.size()), opts.length);
    if (len < 2) continue;
    at::Tensor ids = at::empty({1, len}, at::kLong);
    at::Tensor counts = at::ones({len}, at::kBool);
    auto* p = ids.data_ptr<int64_t>();
    for (int64_t t = 0; t < len; ++t) p[t] = e.ids[t];
    if (opts.trained_only) {
      // Position t is trained when it predicts a label: trained[t + 1] (the loss shifts by one).
      auto* c = counts.data_ptr<bool>();
      for (int64_t t = 0; t < len; ++t) c[t] = t + 1 < len && e.trained[t + 1];
      if (!counts.any().item<bool>()) continue;
    }
    out.ids.push_back(ids);
    out.counts.push_back(counts);
  }
  if (out.ids.empty())
    throw InputError(out.source + ": no example with at least two tokens" +
                     (opts.trained_only ? " and a trained token" : std::string()) + " to calibrate on");
  return out;
}

std::vector<CalibrationBatch> equal_length_batches(const CalibrationSet& calib, int64_t max_tokens) {
  std::vector<std::vector<size_t>> members;
  std::map<int64_t, size_t> open;  // length → its batch being filled
  for (size_t s = 0; s < calib.ids.size(); ++s) {
    const int64_t len = calib.ids[s].size(1);
    auto it = open.find(len);
    if (it == open.end() || static_cast<int64_t>(members[it->second].size() + 1) * len > max_tokens) {
      members.emplace_back();
      it = open.insert_or_assign(len, members.size() - 1).first;
    }
    members[it->second].push_back(s);
  }
  std::vector<CalibrationBatch> batches;
  for (const auto& m : members) {
    std::vector<at::Tensor> ids, counts;
    for (size_t s : m) ids.push_back(calib.ids[s]), counts.push_back(calib.counts[s]);
    batches.push_back({at::cat(ids), at::cat(counts)});
  }
  return batches;
}

CalibrationSet calibration_from_tokens(const std::vector<int64_t>& ids, const CalibrationOptions& opts, std::string source) {
  CalibrationSet out;
  out.source = std::move(source);
  const int64_t n = static_cast<int64_t>(ids.size());
  if (n < opts.length)
    throw InputError(out.source + ": " + std::to_string(n) + " tokens, fewer than one calibration window of " +
                     std::to_string(opts.length) + " (lower --calib-len)");
  SplitMix64 rng(opts.seed);
  for (int64_t s = 0; s < opts.samples; ++s) {
    const int64_t start = static_cast<int64_t>(rng.below(static_cast<uint64_t>(n - opts.length + 1)));
    out.ids.push_back(at::tensor(std::vector<int64_t>(ids.begin() + start, ids.begin() + start + opts.length), at::kLong)
                          .view({1, opts.length}));
    out.counts.push_back(at::ones({opts.length}, at::kBool));
  }
  return out;
}

}  // namespace qtrain
