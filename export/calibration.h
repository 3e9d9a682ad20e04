// Calibration data for GPTQ (and AWQ): the token sequences whose activations estimate each linear's
// input statistics. By default the run's own training data, rendered with its template exactly as it
// was trained on (a fine-tuned model's activations on generic text — C4, WikiText — are not the ones
// it will see in service); or random windows of a text file (the GPTQ paper's protocol).
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "data/dataset/example_set.h"

namespace qtrain {

struct CalibrationOptions {
  int64_t samples = 128;   // sequences
  int64_t length = 2048;   // tokens per sequence at most (examples are truncated, windows are exact)
  uint64_t seed = 0;       // which examples / windows
  // Count only the positions whose output is trained (they predict a label token: trained[t+1]) in the
  // Hessians; the rest of each sequence is still run (it is the context those positions attend to).
  bool trained_only = false;
};

struct CalibrationSet {
  std::vector<at::Tensor> ids;     // each [1, len] int64, on the CPU
  std::vector<at::Tensor> counts;  // each [len] bool: positions whose activations enter the statistics
  std::string source;              // for the report: "training data (recipe …)" or the text file
  int64_t tokens() const;          // positions counted
};

// `samples` examples of `data` in a seeded random order (all of them when there are fewer), each
// truncated to `length` tokens. Throws InputError when no example has two tokens.
CalibrationSet calibration_from_examples(const ExampleSet& data, const CalibrationOptions& opts, std::string source);

// `samples` windows of exactly `length` tokens at seeded random offsets of `ids` (a tokenized corpus).
// Throws InputError naming `source` when the corpus is shorter than one window.
CalibrationSet calibration_from_tokens(const std::vector<int64_t>& ids, const CalibrationOptions& opts, std::string source);

// The set as batches of equal-length sequences (no padding, so attention is exactly each sequence's
// own), at most `max_tokens` tokens a batch, in order of first appearance of each length: one layer
// call per batch instead of one per sequence. ids [b, len] int64 and counted [b·len] bool, on the CPU.
struct CalibrationBatch {
  at::Tensor ids, counted;
};
std::vector<CalibrationBatch> equal_length_batches(const CalibrationSet& calib, int64_t max_tokens = 16384);

}  // namespace qtrain
