#include "data/dataset/batching.h"

#include <algorithm>
#include <numeric>

#include "data/error.h"
#include "data/dataset/shuffle.h"

namespace qtrain {

std::vector<int64_t> length_grouped_order(const std::vector<int64_t>& lengths, int64_t batch_size, uint64_t seed) {
  const auto n = static_cast<int64_t>(lengths.size());
  std::vector<int64_t> order = permutation(n, seed);
  const int64_t mult = std::max<int64_t>(1, std::min<int64_t>(n / (4 * batch_size), 50));
  const int64_t mega = mult * batch_size;
  int64_t longest_mega = 0;
  for (int64_t b = 0; b < n; b += mega) {
    const auto first = order.begin() + b, last = order.begin() + std::min(n, b + mega);
    std::stable_sort(first, last, [&](int64_t x, int64_t y) { return lengths[x] > lengths[y]; });
    if (lengths[*first] > lengths[order[longest_mega]]) longest_mega = b;
  }
  if (n > 0) std::swap(order[0], order[longest_mega]);
  return order;
}

at::Tensor segment_attention_mask(const at::Tensor& segment_ids) {
  TORCH_CHECK(segment_ids.dim() == 2, "segment_attention_mask: segment_ids must be [B, T], found ", segment_ids.sizes());
  const int64_t T = segment_ids.size(1);
  const auto q = segment_ids.unsqueeze(2), k = segment_ids.unsqueeze(1);  // [B, T, 1], [B, 1, T]
  const auto opts = at::TensorOptions().dtype(at::kBool).device(segment_ids.device());
  const auto causal = at::ones({T, T}, opts).tril();
  const auto self = at::eye(T, opts);
  return ((q == k & q.ge(0) & causal) | self).unsqueeze(1);  // [B, 1, T, T]
}

Loader::Loader(std::shared_ptr<const ExampleSet> data, int64_t micro_batch_size, const DataConfig& config, uint64_t seed,
               int64_t rank, int64_t world_size, bool shuffle)
    : data_(std::move(data)),
      micro_batch_size_(micro_batch_size),
      rank_(rank),
      world_size_(world_size),
      max_seq_len_(config.max_seq_len),
      packing_(config.packing),
      group_by_length_(config.group_by_length),
      shuffle_(shuffle) {
  if (!data_ || data_->size() == 0) throw InputError("data loader: the dataset split has no examples");
  if (micro_batch_size < 1) throw UsageError("training.micro_batch_size: must be positive, found " + std::to_string(micro_batch_size));
  if (world_size < 1 || rank < 0 || rank >= world_size)
    throw UsageError("data loader: rank " + std::to_string(rank) + " is not in [0, world_size " + std::to_string(world_size) + ")");
  cursor_.seed = seed;
}

const Loader::EpochPlan& Loader::plan(int64_t epoch) const {
  if (plan_.epoch == epoch) return plan_;
  const int64_t n = data_->size();
  std::vector<int64_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), int64_t{0});
  const uint64_t epoch_seed = derive_seed(cursor_.seed, 1000 + static_cast<uint64_t>(epoch));
  if (shuffle_ && group_by_length_) {
    std::vector<int64_t> lengths(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) lengths[i] = data_->length(i);
    order = length_grouped_order(lengths, micro_batch_size_ * world_size_, epoch_seed);
  } else if (shuffle_) {
    order = permutation(n, epoch_seed);
  }
  EpochPlan p;
  p.epoch = epoch;
  if (packing_) {
    // Greedy in epoch order: a row takes the next example while it fits in max_seq_len. Examples
    // were cut to max_seq_len when tokenized, so each fits in a row of its own.
    int64_t used = 0;
    for (int64_t i : order) {
      const int64_t len = data_->length(i);
      if (p.rows.empty() || used + len > max_seq_len_) {
        p.rows.emplace_back();
        used = 0;
      }
      p.rows.back().push_back(i);
      used += len;
    }
  } else {
    for (int64_t i : order) p.rows.push_back({i});
  }
  plan_ = std::move(p);
  return plan_;
}

int64_t Loader::batches_per_epoch() const {
  const auto rows = static_cast<int64_t>(plan(cursor_.epoch).rows.size());
  const int64_t global = (rows + micro_batch_size_ - 1) / micro_batch_size_;
  return (global + world_size_ - 1) / world_size_;
}

std::vector<std::vector<int64_t>> Loader::batch_rows(int64_t epoch, int64_t b) const {
  const auto& rows = plan(epoch).rows;
  const int64_t g = b * world_size_ + rank_;
  const auto begin = std::min<int64_t>(g * micro_batch_size_, static_cast<int64_t>(rows.size()));
  const auto end = std::min<int64_t>(begin + micro_batch_size_, static_cast<int64_t>(rows.size()));
  return {rows.begin() + begin, rows.begin() + end};
}

Batch Loader::collate(const std::vector<std::vector<int64_t>>& rows) const {
  const auto B = std::max<int64_t>(1, static_cast<int64_t>(rows.size()));
  int64_t T = 1;
  for (const auto& row : rows) {
    int64_t len = 0;
    for (int64_t i : row) len += data_->length(i);
    T = std::max(T, len);
  }
  auto ids = at::full({B, T}, static_cast<int64_t>(data_->pad_id), at::kLong);
  auto labels = at::full({B, T}, int64_t{-100}, at::kLong);
  auto positions = at::zeros({B, T}, at::kLong);
  auto segments = at::full({B, T}, int32_t{-1}, at::kInt);
  auto ids_a = ids.accessor<int64_t, 2>(), labels_a = labels.accessor<int64_t, 2>(), pos_a = positions.accessor<int64_t, 2>();
  auto seg_a = segments.accessor<int32_t, 2>();
  int64_t targets = 0;
  for (size_t r = 0; r < rows.size(); ++r) {
    int64_t t = 0;
    for (size_t d = 0; d < rows[r].size(); ++d) {
      const auto ex = data_->at(rows[r][d]);
      for (size_t k = 0; k < ex.ids.size(); ++k, ++t) {
        ids_a[r][t] = ex.ids[k];
        pos_a[r][t] = static_cast<int64_t>(k);
        seg_a[r][t] = static_cast<int32_t>(d);
        if (k > 0 && ex.trained[k]) {
          labels_a[r][t] = ex.ids[k];
          ++targets;
        }
      }
    }
  }
  return {ids, labels, positions, segments, targets};
}

Batch Loader::next() {
  if (cursor_.position >= batches_per_epoch()) {
    ++cursor_.epoch;
    cursor_.position = 0;
  }
  Batch b = collate(batch_rows(cursor_.epoch, cursor_.position));
  ++cursor_.position;
  return b;
}

void Loader::restore(const Cursor& c) {
  if (c.seed != cursor_.seed)
    throw UsageError("data cursor: saved with seed " + std::to_string(c.seed) + " but this run's seed is " +
                     std::to_string(cursor_.seed) + " (the batch order would differ)");
  if (c.epoch < 0 || c.position < 0) throw UsageError("data cursor: negative epoch or position");
  Cursor saved = cursor_;
  cursor_ = c;
  if (c.position > batches_per_epoch()) {
    const int64_t n = batches_per_epoch();
    cursor_ = saved;
    throw UsageError("data cursor: position " + std::to_string(c.position) + " is past the epoch's " + std::to_string(n) +
                     " batches (was the checkpoint made with other data, batch size or world size?)");
  }
}

}  // namespace qtrain
