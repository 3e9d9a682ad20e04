// Packing is exact on the real model: documents packed into rows (with padding, positions restarting per
// document, attention per document through attention.h) give each document the logits, the loss and the
// LoRA gradients it gets when run alone, on the shared trained tiny Llama (GQA: 8 query heads over 4 kv
// heads), with and without per-layer recompute. A negative control (the same row with one segment id for
// all documents) shows the comparison can fail.
#include <gtest/gtest.h>

#include <ATen/CPUGeneratorImpl.h>

#include <iostream>
#include <random>

#include "tests/shared_data.h"
#include "trainer/model/model.h"

namespace qtrain {
namespace {

struct Doc {
  at::Tensor ids;  // [L] int64
};

// Sum over the document of -log p(token t+1 | tokens ..t): logits [L, vocab], ids [L].
at::Tensor doc_loss(const at::Tensor& logits, const at::Tensor& ids) {
  const int64_t n = ids.size(0) - 1;
  if (n <= 0) return at::zeros({}, logits.options());
  return at::cross_entropy_loss(logits.narrow(0, 0, n), ids.narrow(0, 1, n), {}, at::Reduction::Sum);
}

struct Packed {
  at::Tensor ids, segment_ids, positions;                   // [rows, seq]
  std::vector<std::tuple<int64_t, int64_t, int64_t>> where;  // per document: row, start, length
};

// rows: the documents of each row, in order; every row padded to seq.
Packed pack(const std::vector<Doc>& docs, const std::vector<std::vector<int>>& rows, int64_t seq) {
  const int64_t b = static_cast<int64_t>(rows.size());
  Packed p{at::zeros({b, seq}, at::kLong), at::full({b, seq}, -1, at::kInt), at::zeros({b, seq}, at::kLong), {}};
  p.where.resize(docs.size());
  for (int64_t r = 0; r < b; ++r) {
    int64_t t = 0;
    for (size_t j = 0; j < rows[r].size(); ++j) {
      const Doc& d = docs[static_cast<size_t>(rows[r][j])];
      const int64_t len = d.ids.size(0);
      p.ids[r].narrow(0, t, len).copy_(d.ids);
      p.segment_ids[r].narrow(0, t, len).fill_(static_cast<int>(j));
      p.positions[r].narrow(0, t, len).copy_(at::arange(len, at::kLong));
      p.where[static_cast<size_t>(rows[r][j])] = {r, t, len};
      t += len;
    }
    EXPECT_LE(t, seq);
  }
  return p;
}

std::vector<at::Tensor> lora_grads(const LlamaModel& m) {
  std::vector<at::Tensor> g;
  for (const auto& [name, t] : m.lora_parameters()) g.push_back(t.grad().defined() ? t.grad().clone() : at::zeros_like(t));
  return g;
}

void zero_lora_grads(const LlamaModel& m) {
  for (const auto& [name, t] : m.lora_parameters())
    if (t.grad().defined()) t.mutable_grad().zero_();
}

// fp32; the same ops on other shapes (GEMMs over other row counts, attention per document vs a whole
// causal row), so rounding differs. Measured over 11 seeds: max |packed - alone| logit ≤ 3.8e-7 × max
// |logit| (~19 on this model), doc loss sums ≤ 4e-9 relative, LoRA gradients ≤ 7.5e-7 × their largest
// element. 1e-5 relative is 13-25× those; the negative control moves logits by ~12 (60,000× the bound).
constexpr double kLogitRelTol = 1e-5;
constexpr double kGradRelTol = 1e-5;

TEST(PackedLoss, EqualsUnpackedOnTheTrainedTinyLlama) {
  const std::filesystem::path dir = test_tools::shared_tiny_model();
  if (dir.empty()) GTEST_SKIP() << "shared test model (../shared/data) not found";
  LlamaModel m = LlamaModel::load(dir, {});
  const uint64_t seed = std::random_device{}();
  std::cout << "seed " << seed << "\n";
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  LoraSpec spec;
  spec.config.rank = 4;
  spec.config.alpha = 8;
  m.add_lora(spec, gen);
  {
    at::NoGradGuard no_grad;  // B = 0 at init would leave A without gradient: make both matter
    for (const auto& [name, t] : m.lora_parameters()) t.uniform_(-0.05, 0.05, gen);
  }

  // Awkward documents: a one-token one, short ones, one longer than a flash tile would be.
  const std::vector<int64_t> lengths = {37, 1, 50, 2, 70, 12};
  std::vector<Doc> docs;
  for (const int64_t len : lengths)
    docs.push_back({at::randint(3, m.config().vocab_size, {len}, gen, at::kLong)});
  // Row 0: three documents (one a single token) and 8 padding; row 1: one document and 26 padding;
  // row 2: two short documents and 82 padding (equal-length documents across rows are batched together).
  const std::vector<std::vector<int>> rows = {{0, 1, 2}, {4}, {3, 5}};
  const Packed p = pack(docs, rows, /*seq=*/96);

  for (const bool recompute : {false, true}) {
    SCOPED_TRACE(recompute ? "recompute" : "no recompute");
    RunContext ctx;
    ctx.recompute = recompute;
    // Each document alone, as an unpadded batch of one (plain causal attention, positions 0..L-1).
    std::vector<at::Tensor> alone_logits, alone_loss;
    std::vector<at::Tensor> alone_grads;
    zero_lora_grads(m);
    for (const Doc& d : docs) {
      const int64_t len = d.ids.size(0);
      const at::Tensor ids = d.ids.view({1, len});
      const at::Tensor h = m.hidden_states(ids, at::zeros({1, len}, at::kInt), at::arange(len, at::kLong).view({1, len}), &ctx);
      const at::Tensor logits = m.lm_head(h)[0];  // [L, vocab]
      const at::Tensor loss = doc_loss(logits, d.ids);
      if (loss.requires_grad()) loss.backward();  // a one-token document has no target
      alone_logits.push_back(logits.detach());
      alone_loss.push_back(loss.detach());
    }
    alone_grads = lora_grads(m);

    zero_lora_grads(m);
    const at::Tensor h = m.hidden_states(p.ids, p.segment_ids, p.positions, &ctx);
    const at::Tensor logits = m.lm_head(h);  // [rows, seq, vocab]
    at::Tensor total = at::zeros({}, logits.options());
    double max_logit = 0, logit_diff = 0, loss_diff = 0, loss_scale = 0;
    for (size_t j = 0; j < docs.size(); ++j) {
      const auto [r, start, len] = p.where[j];
      const at::Tensor packed = logits[r].narrow(0, start, len);
      const at::Tensor loss = doc_loss(packed, docs[j].ids);
      total = total + loss;
      max_logit = std::max(max_logit, alone_logits[j].abs().max().item<double>());
      logit_diff = std::max(logit_diff, (packed.detach() - alone_logits[j]).abs().max().item<double>());
      loss_diff = std::max(loss_diff, std::abs(loss.item<double>() - alone_loss[j].item<double>()));
      loss_scale = std::max(loss_scale, std::abs(alone_loss[j].item<double>()));
    }
    total.backward();
    const std::vector<at::Tensor> packed_grads = lora_grads(m);
    double grad_diff = 0, grad_scale = 0;
    for (size_t i = 0; i < packed_grads.size(); ++i) {
      grad_diff = std::max(grad_diff, (packed_grads[i] - alone_grads[i]).abs().max().item<double>());
      grad_scale = std::max(grad_scale, alone_grads[i].abs().max().item<double>());
    }
    std::cout << (recompute ? "recompute" : "plain") << ": max |Δ logit| " << logit_diff << " (max |logit| " << max_logit
              << "), max |Δ doc loss| " << loss_diff << " (max " << loss_scale << "), max |Δ LoRA grad| " << grad_diff
              << " (max " << grad_scale << ")\n";
    EXPECT_LT(logit_diff, kLogitRelTol * max_logit);
    EXPECT_LT(loss_diff, kGradRelTol * loss_scale);
    EXPECT_GT(grad_scale, 0.0);
    EXPECT_LT(grad_diff, kGradRelTol * grad_scale);
    EXPECT_TRUE(logits.isfinite().all().item<bool>()) << "padding positions too";
  }

  // Negative control: the same packed row with one segment id for every token (documents see each
  // other, positions still restart): the later documents' logits move far beyond the tolerance.
  at::NoGradGuard no_grad;
  const at::Tensor leaky = at::where(p.segment_ids.ge(0), at::zeros_like(p.segment_ids), p.segment_ids);
  const at::Tensor a = m.lm_head(m.hidden_states(p.ids, p.segment_ids, p.positions));
  const at::Tensor b = m.lm_head(m.hidden_states(p.ids, leaky, p.positions));
  const auto [r, start, len] = p.where[2];  // the third document of row 0
  const double moved = (a[r].narrow(0, start, len) - b[r].narrow(0, start, len)).abs().max().item<double>();
  std::cout << "negative control (documents see each other): max |Δ logit| " << moved << "\n";
  EXPECT_GT(moved, 100 * kLogitRelTol * a.abs().max().item<double>());
}

}  // namespace
}  // namespace qtrain
