// Batching: sharding without loss or duplication, exact resume from a cursor, group_by_length order,
// packing layout, and the packed-vs-unpacked loss identity on a tiny pure-libtorch causal attention
// model (with negative controls that must fail when segment masking is dropped).
#include <gtest/gtest.h>

#include <map>
#include <set>

#include "data/dataset/batching.h"
#include "data/error.h"
#include "data/dataset/shuffle.h"

using namespace qtrain;

namespace {

// n examples of varied lengths (3..3+max_extra), ids from a seed, every token trained but the first.
std::shared_ptr<ExampleSet> make_set(int64_t n, uint64_t seed, int64_t max_extra = 20, int32_t vocab = 32) {
  auto s = std::make_shared<ExampleSet>();
  s->pad_id = 0;
  SplitMix64 g(seed);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t len = 3 + static_cast<int64_t>(g.below(max_extra + 1));
    std::vector<int32_t> ids(len);
    std::vector<uint8_t> trained(len, 1);
    for (auto& id : ids) id = 1 + static_cast<int32_t>(g.below(vocab - 1));
    trained[0] = 0;
    if (len > 4) trained[1] = 0;  // some masked prompt tokens
    s->add(ids, trained);
  }
  return s;
}

DataConfig cfg(bool packing, bool group, int64_t max_seq_len = 64) {
  DataConfig c;
  c.packing = packing;
  c.group_by_length = group;
  c.max_seq_len = max_seq_len;
  return c;
}

// Decodes a Batch back into example identities via the rows the loader reports.
std::vector<int64_t> examples_of(const std::vector<std::vector<int64_t>>& rows) {
  std::vector<int64_t> out;
  for (const auto& r : rows) out.insert(out.end(), r.begin(), r.end());
  return out;
}

bool same_batch(const Batch& a, const Batch& b) {
  return a.input_ids.equal(b.input_ids) && a.labels.equal(b.labels) && a.positions.equal(b.positions) &&
         a.segment_ids.equal(b.segment_ids) && a.num_target_tokens == b.num_target_tokens;
}

struct Mode {
  bool packing, group;
};
const Mode kModes[] = {{false, false}, {false, true}, {true, false}, {true, true}};

TEST(Batching, ShardingLosesAndDuplicatesNothing) {
  const auto data = make_set(37, 1);
  for (const Mode m : kModes)
    for (int64_t world : {1, 2, 3, 4})
      for (int64_t mbs : {1, 2, 5}) {
        std::multiset<int64_t> seen;
        int64_t per_rank = -1;
        for (int64_t rank = 0; rank < world; ++rank) {
          Loader l(data, mbs, cfg(m.packing, m.group), 42, rank, world);
          if (per_rank < 0) per_rank = l.batches_per_epoch();
          EXPECT_EQ(l.batches_per_epoch(), per_rank) << "every rank must take the same number of steps";
          for (int64_t b = 0; b < l.batches_per_epoch(); ++b)
            for (int64_t i : examples_of(l.batch_rows(0, b))) seen.insert(i);
        }
        ASSERT_EQ(seen.size(), 37u) << "packing " << m.packing << " world " << world << " mbs " << mbs;
        for (int64_t i = 0; i < 37; ++i) EXPECT_EQ(seen.count(i), 1u) << i;
      }
}

TEST(Batching, FillerBatchHasNoTargets) {
  // 2 examples, world 2, micro-batch 2: one global micro-batch, so rank 1 gets a one-token filler.
  const auto data = make_set(2, 2);
  Loader l(data, 2, cfg(false, false), 42, 1, 2);
  ASSERT_EQ(l.batches_per_epoch(), 1);
  const Batch b = l.next();
  EXPECT_EQ(b.num_target_tokens, 0);
  EXPECT_EQ(b.input_ids.sizes(), (at::IntArrayRef{1, 1}));
  EXPECT_EQ(b.segment_ids.item<int32_t>(), -1);
}

TEST(Batching, CursorResumesMidEpochExactly) {
  const auto data = make_set(29, 3);
  for (const Mode m : kModes) {
    Loader a(data, 3, cfg(m.packing, m.group), 1234, 1, 2);
    const int64_t per_epoch = a.batches_per_epoch();
    for (int64_t i = 0; i < per_epoch + 2; ++i) a.next();  // into the second epoch
    const Cursor c = a.cursor();
    std::vector<Batch> expected;
    for (int64_t i = 0; i < 2 * per_epoch; ++i) expected.push_back(a.next());  // across another roll-over

    Loader b(data, 3, cfg(m.packing, m.group), 1234, 1, 2);
    b.restore(c);
    EXPECT_EQ(b.epoch(), c.epoch);
    for (size_t i = 0; i < expected.size(); ++i) ASSERT_TRUE(same_batch(b.next(), expected[i])) << "batch " << i;

    // Negative control: without restore the batches differ.
    Loader fresh(data, 3, cfg(m.packing, m.group), 1234, 1, 2);
    bool all_same = true;
    for (size_t i = 0; i < expected.size(); ++i) all_same &= same_batch(fresh.next(), expected[i]);
    EXPECT_FALSE(all_same);
  }
}

TEST(Batching, RestoreRejectsAnotherSeed) {
  const auto data = make_set(10, 4);
  Loader l(data, 2, cfg(false, false), 1, 0, 1);
  EXPECT_THROW(l.restore(Cursor{0, 1, 2}), UsageError);
  EXPECT_THROW(l.restore(Cursor{0, 100, 1}), UsageError);
}

TEST(Batching, ShuffleIsDeterministicAndChangesPerEpoch) {
  const auto data = make_set(50, 5);
  Loader a(data, 1, cfg(false, false), 7, 0, 1), b(data, 1, cfg(false, false), 7, 0, 1), c(data, 1, cfg(false, false), 8, 0, 1);
  std::vector<int64_t> e0, e0b, e1, other;
  for (int64_t i = 0; i < 50; ++i) {
    e0.push_back(a.batch_rows(0, i)[0][0]);
    e0b.push_back(b.batch_rows(0, i)[0][0]);
    e1.push_back(a.batch_rows(1, i)[0][0]);
    other.push_back(c.batch_rows(0, i)[0][0]);
  }
  EXPECT_EQ(e0, e0b);
  EXPECT_NE(e0, e1);
  EXPECT_NE(e0, other);
  std::vector<int64_t> identity(50);
  std::iota(identity.begin(), identity.end(), 0);
  EXPECT_NE(e0, identity);
  // The order is pinned: splitmix64 + Fisher-Yates is the same on every platform.
  EXPECT_EQ(permutation(5, 42), permutation(5, 42));
}

TEST(Batching, LengthGroupedOrderFollowsMegaBatches) {
  std::vector<int64_t> lengths;
  SplitMix64 g(9);
  for (int i = 0; i < 1000; ++i) lengths.push_back(1 + static_cast<int64_t>(g.below(500)));
  const int64_t bs = 4;
  const auto order = length_grouped_order(lengths, bs, 11);
  ASSERT_EQ(order.size(), 1000u);
  EXPECT_EQ(std::set<int64_t>(order.begin(), order.end()).size(), 1000u);
  // The longest example comes first.
  EXPECT_EQ(lengths[order[0]], *std::max_element(lengths.begin(), lengths.end()));
  // mult = min(1000 / 16, 50) = 50: mega-batches of 200 sorted descending (the first one except its
  // first element, which was swapped in).
  const int64_t mega = 50 * bs;
  for (int64_t b = 0; b < 1000; b += mega)
    for (int64_t i = b + 2; i < std::min<int64_t>(1000, b + mega); ++i) EXPECT_GE(lengths[order[i - 1]], lengths[order[i]]) << i;
  // Batches are much more uniform than a plain shuffle (the point of grouping).
  auto spread = [&](const std::vector<int64_t>& o) {
    int64_t total = 0;
    for (size_t b = 0; b < o.size(); b += bs) {
      int64_t lo = INT64_MAX, hi = 0;
      for (size_t i = b; i < b + bs; ++i) lo = std::min(lo, lengths[o[i]]), hi = std::max(hi, lengths[o[i]]);
      total += hi - lo;
    }
    return total;
  };
  EXPECT_LT(spread(order) * 5, spread(permutation(1000, 11)));
}

TEST(Batching, PackedRowsRestartPositionsAndMaskDocumentStarts) {
  const auto data = make_set(20, 6);
  Loader l(data, 2, cfg(true, false, 48), 3, 0, 1);
  for (int64_t b = 0; b < l.batches_per_epoch(); ++b) {
    const auto rows = l.batch_rows(0, b);
    const Batch batch = l.collate(rows);
    int64_t targets = 0;
    for (size_t r = 0; r < rows.size(); ++r) {
      int64_t t = 0;
      EXPECT_GE(rows[r].size(), 1u);
      for (size_t d = 0; d < rows[r].size(); ++d) {
        const auto ex = data->at(rows[r][d]);
        for (size_t k = 0; k < ex.ids.size(); ++k, ++t) {
          EXPECT_EQ(batch.input_ids[r][t].item<int64_t>(), ex.ids[k]);
          EXPECT_EQ(batch.positions[r][t].item<int64_t>(), static_cast<int64_t>(k));
          EXPECT_EQ(batch.segment_ids[r][t].item<int32_t>(), static_cast<int32_t>(d));
          const int64_t want = (k > 0 && ex.trained[k]) ? ex.ids[k] : -100;
          EXPECT_EQ(batch.labels[r][t].item<int64_t>(), want);
          targets += want != -100;
        }
      }
      EXPECT_LE(t, 48);
      for (; t < batch.input_ids.size(1); ++t) {
        EXPECT_EQ(batch.segment_ids[r][t].item<int32_t>(), -1);
        EXPECT_EQ(batch.labels[r][t].item<int64_t>(), -100);
      }
    }
    EXPECT_EQ(batch.num_target_tokens, targets);
  }
}

// ---------------------------------------------------------------- packed == unpacked

// One causal attention layer with position embeddings, masks from segment_attention_mask.
struct TinyModel {
  at::Tensor emb, pos, wq, wk, wv, wo, head;
  explicit TinyModel(int64_t vocab = 32, int64_t dim = 16, int64_t max_pos = 64) {
    auto gen = at::make_generator<at::CPUGeneratorImpl>(1234);
    auto r = [&](std::initializer_list<int64_t> s) { return at::randn(s, gen, at::kFloat) * 0.5; };
    emb = r({vocab, dim}), pos = r({max_pos, dim}), wq = r({dim, dim}), wk = r({dim, dim}), wv = r({dim, dim});
    wo = r({dim, dim}), head = r({dim, vocab});
  }
  at::Tensor logits(const Batch& b, const at::Tensor& mask) const {  // [B, T, V]
    const auto h = emb.index_select(0, b.input_ids.flatten()).view({b.input_ids.size(0), b.input_ids.size(1), -1}) +
                   pos.index_select(0, b.positions.flatten()).view({b.input_ids.size(0), b.input_ids.size(1), -1});
    const auto q = at::matmul(h, wq).unsqueeze(1), k = at::matmul(h, wk).unsqueeze(1), v = at::matmul(h, wv).unsqueeze(1);
    const auto o = at::scaled_dot_product_attention(q, k, v, mask).squeeze(1);  // [B, T, D]
    return at::matmul(at::matmul(o, wo) + h, head);
  }
  // Summed next-token cross-entropy over the labels (the loss shifts by one).
  double loss_sum(const Batch& b, const at::Tensor& mask) const {
    const auto lg = logits(b, mask);
    const auto V = lg.size(2);
    const auto l = at::cross_entropy_loss(lg.slice(1, 0, -1).reshape({-1, V}), b.labels.slice(1, 1).reshape({-1}), {},
                                          at::Reduction::Sum, -100);
    return l.item<double>();
  }
};

at::Tensor plain_causal(const Batch& b) {  // the negative control: ignores document boundaries
  const int64_t T = b.input_ids.size(1);
  return at::ones({T, T}, at::kBool).tril().expand({b.input_ids.size(0), 1, T, T});
}

TEST(Batching, PackedLossEqualsUnpackedLoss) {
  const auto data = make_set(12, 8);
  const TinyModel model;
  Loader packed(data, 100, cfg(true, false, 64), 5, 0, 1);
  Loader unpacked(data, 100, cfg(false, false), 5, 0, 1);
  const auto prow = packed.batch_rows(0, 0), urow = unpacked.batch_rows(0, 0);
  ASSERT_EQ(examples_of(prow).size(), 12u);
  ASSERT_EQ(urow.size(), 12u);
  ASSERT_LT(prow.size(), urow.size()) << "the test needs rows with several documents";
  const Batch pb = packed.collate(prow), ub = unpacked.collate(urow);
  ASSERT_EQ(pb.num_target_tokens, ub.num_target_tokens);
  const double lp = model.loss_sum(pb, segment_attention_mask(pb.segment_ids));
  const double lu = model.loss_sum(ub, segment_attention_mask(ub.segment_ids));
  // fp32: the same products summed in another blocking; ~1e-7 relative per op over a few hundred
  // terms, so 1e-5 relative is rounding, not a masking error (which moves it by > 1e-2, below).
  EXPECT_NEAR(lp, lu, 1e-5 * std::abs(lu));
  // Negative control: attention across documents changes the loss well beyond rounding.
  const double leak = model.loss_sum(pb, plain_causal(pb));
  EXPECT_GT(std::abs(leak - lu), 1e-2 * std::abs(lu));
}

TEST(Batching, PackedRowNeverAttendsAcrossBoundary) {
  const auto data = make_set(12, 10);
  const TinyModel model;
  Loader packed(data, 100, cfg(true, false, 64), 5, 0, 1);
  const auto rows = packed.batch_rows(0, 0);
  size_t r = 0;
  while (r < rows.size() && rows[r].size() < 2) ++r;
  ASSERT_LT(r, rows.size()) << "need a row with two documents";
  const Batch b = packed.collate(rows);
  const int64_t first_len = data->length(rows[r][0]);
  // Perturb the first document's tokens; the later documents' logits must not move at all.
  Batch changed = b;
  changed.input_ids = b.input_ids.clone();
  changed.input_ids[r].slice(0, 0, first_len).fill_(31);
  auto later = [&](const at::Tensor& lg) { return lg[r].slice(0, first_len, first_len + data->length(rows[r][1])); };
  EXPECT_TRUE(at::equal(later(model.logits(b, segment_attention_mask(b.segment_ids))),
                        later(model.logits(changed, segment_attention_mask(changed.segment_ids)))));
  // Negative control: with a plain causal mask the change leaks into the next document.
  EXPECT_FALSE(at::equal(later(model.logits(b, plain_causal(b))), later(model.logits(changed, plain_causal(changed)))));
  // And the mask itself: no true entry between different segments.
  const auto m = segment_attention_mask(b.segment_ids).squeeze(1);
  const auto seg = b.segment_ids;
  const auto cross = seg.unsqueeze(2) != seg.unsqueeze(1);
  EXPECT_FALSE((m & cross).any().item<bool>());
}

}  // namespace
