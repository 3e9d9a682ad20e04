// Batches for training and evaluation: a deterministic per-epoch order (a seeded shuffle, or
// group_by_length's length-sorted mega-batches), optional packing of several examples per row,
// right padding, sharding of micro-batches across ranks with nothing lost or duplicated, and a
// cursor of three integers that reproduces the remaining batches exactly.
//
// Sharding: the epoch's rows are cut into global micro-batches of micro_batch_size rows; rank r
// takes global micro-batches r, r + world, r + 2·world, ... Every rank has the same number of
// batches per epoch; a rank left without rows at the end gets a filler batch of one padding token
// (num_target_tokens = 0), so collective ops stay in step and the loss is unchanged.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include <ATen/ATen.h>

#include "data/dataset/data_config.h"
#include "data/dataset/example_set.h"

namespace qtrain {

struct Batch {
  at::Tensor input_ids;    // [B, T] int64, right-padded with the pad id
  at::Tensor labels;       // [B, T] int64: labels[t] is the label of position t (the loss shifts by one,
                           // as HF does); -100 = not trained, and always at each document's first token
                           // so a packed document is never predicted from the one before it
  at::Tensor positions;    // [B, T] int64, restart at 0 per packed document, 0 in padding
  at::Tensor segment_ids;  // [B, T] int32, document index within the row, -1 for padding
  int64_t num_target_tokens = 0;  // labels != -100: the tokens this batch adds to the loss
};

// Where a Loader is: the next batch is batch `position` (of this rank) in epoch `epoch`, with the
// order drawn from `seed`. Saved in checkpoints; restore() on a Loader built the same way (data,
// micro_batch_size, packing, group_by_length, rank, world_size) continues with identical batches.
struct Cursor {
  int64_t epoch = 0;
  int64_t position = 0;
  uint64_t seed = 0;
};

class Loader {
 public:
  // data must hold at least one example. shuffle = false keeps file order (evaluation).
  Loader(std::shared_ptr<const ExampleSet> data, int64_t micro_batch_size, const DataConfig& config, uint64_t seed,
         int64_t rank, int64_t world_size, bool shuffle = true);

  Batch next();  // the epoch rolls over after batches_per_epoch() batches
  int64_t epoch() const { return cursor_.epoch; }
  int64_t batches_per_epoch() const;  // the same on every rank
  Cursor cursor() const { return cursor_; }
  void restore(const Cursor& c);  // UsageError when the seed differs or the position is past the epoch

  // The rows of this rank's batch `b` in `epoch`: each row lists example indices (several when
  // packing). Empty for a filler batch. For tests and `qtrain data stats`.
  std::vector<std::vector<int64_t>> batch_rows(int64_t epoch, int64_t b) const;

  // Build a Batch from rows of example indices (empty rows → a filler batch).
  Batch collate(const std::vector<std::vector<int64_t>>& rows) const;

 private:
  struct EpochPlan {
    int64_t epoch = -1;
    std::vector<std::vector<int64_t>> rows;  // all ranks' rows, in global order
  };
  const EpochPlan& plan(int64_t epoch) const;

  std::shared_ptr<const ExampleSet> data_;
  int64_t micro_batch_size_, rank_, world_size_, max_seq_len_;
  bool packing_, group_by_length_, shuffle_;
  Cursor cursor_;
  mutable EpochPlan plan_;  // the current epoch's rows, recomputed when the epoch changes
};

// The epoch order of group_by_length, HF LengthGroupedSampler semantics reimplemented: a seeded
// permutation cut into mega-batches of mega_batch_mult·batch_size (mult = min(n / (4·batch_size), 50),
// at least 1), each sorted by length, longest first, and the longest example of all moved to the
// front of the first mega-batch (an out-of-memory shows up at the first step, not hours in).
std::vector<int64_t> length_grouped_order(const std::vector<int64_t>& lengths, int64_t batch_size, uint64_t seed);

// The attention a packed batch allows: [B, 1, T, T] bool, true where query t may attend key s:
// same document (segment) and s <= t. A padding position attends only to itself (so no row of the
// softmax is empty and nothing real ever sees padding).
at::Tensor segment_attention_mask(const at::Tensor& segment_ids);

}  // namespace qtrain
