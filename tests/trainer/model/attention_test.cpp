// Per-document attention (trainer/model/attention.h) against the dense-mask SDPA it replaces, on random
// q, k, v and awkward segment layouts: one-token documents, padding at either end, a row that is all
// padding, many documents, equal lengths across rows (one batched call), grouped-query heads, sliding
// windows; forward and the gradients of q, k, v. Negative controls show the comparison can fail. The
// Gpu test runs the varlen flash path against the reference path (skips without a CUDA sm80+ device).
#include <gtest/gtest.h>

#include <ATen/CPUGeneratorImpl.h>

#include <iostream>
#include <random>
#include <sstream>

#include "trainer/model/attention.h"
#include "trainer/model/attention_mask.h"

namespace qtrain {
namespace {

using Rows = std::vector<std::vector<int>>;

at::Tensor seg_tensor(const Rows& rows) {
  std::vector<int> flat;
  for (const auto& r : rows) flat.insert(flat.end(), r.begin(), r.end());
  return at::tensor(flat, at::kInt).view({static_cast<int64_t>(rows.size()), static_cast<int64_t>(rows[0].size())});
}

std::string describe(const Rows& rows) {
  std::ostringstream s;
  for (const auto& r : rows) {
    s << "[";
    for (const int id : r) s << id << " ";
    s << "] ";
  }
  return s.str();
}

// A random packed row: documents of random lengths (a third of them one token long), then padding.
std::vector<int> random_row(int64_t seq, std::mt19937_64& rng) {
  std::vector<int> row;
  const int64_t fill = std::uniform_int_distribution<int64_t>(0, seq)(rng);  // tokens before the padding
  for (int doc = 0; static_cast<int64_t>(row.size()) < fill; ++doc) {
    const int64_t len = std::uniform_int_distribution<int>(0, 2)(rng) == 0 ? 1 : std::uniform_int_distribution<int64_t>(2, 9)(rng);
    for (int64_t i = 0; i < len && static_cast<int64_t>(row.size()) < fill; ++i) row.push_back(doc);
  }
  row.resize(static_cast<size_t>(seq), -1);
  return row;
}

struct Qkv {
  at::Tensor q, k, v, grad_out;
};

Qkv random_qkv(int64_t batch, int64_t heads, int64_t kv_heads, int64_t seq, int64_t hd, uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  const auto opts = at::TensorOptions().dtype(at::kFloat);
  // Scaled like trained activations (scores of a few units), so softmax is neither flat nor one-hot.
  return {at::randn({batch, heads, seq, hd}, gen, opts) * 1.5, at::randn({batch, kv_heads, seq, hd}, gen, opts) * 1.5,
          at::randn({batch, kv_heads, seq, hd}, gen, opts), at::randn({batch, heads, seq, hd}, gen, opts)};
}

struct Result {
  at::Tensor out, dq, dk, dv;
};

// out and the gradients of q, k, v for the upstream gradient grad_out.
template <typename Fn>
Result run(const Qkv& x, Fn attention) {
  const at::Tensor q = x.q.detach().requires_grad_(), k = x.k.detach().requires_grad_(), v = x.v.detach().requires_grad_();
  const at::Tensor out = attention(q, k, v);
  out.backward(x.grad_out);
  // A tensor no output depends on (q and k when every token is padding) gets no gradient: zeros.
  const auto grad = [](const at::Tensor& t) { return t.grad().defined() ? t.grad() : at::zeros_like(t); };
  return {out.detach(), grad(q), grad(k), grad(v)};
}

Result dense(const Qkv& x, const at::Tensor& seg, std::optional<int64_t> window) {
  const at::Tensor mask = build_attention_mask(seg, seg.size(0), seg.size(1), window, at::kCPU);
  return run(x, [&](const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
    return mask.defined() ? at::scaled_dot_product_attention(q, k, v, mask, 0.0, false, std::nullopt, true)
                          : at::scaled_dot_product_attention(q, k, v, std::nullopt, 0.0, true, std::nullopt, true);
  });
}

Result segmented(const Qkv& x, const at::Tensor& seg, std::optional<int64_t> window) {
  const AttentionLayout layout = AttentionLayout::for_rows(seg, seg.size(0), seg.size(1), window, at::kCPU);
  return run(x, [&](const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) { return attend(q, k, v, layout); });
}

double max_diff(const Result& a, const Result& b) {
  double d = 0;
  for (const auto& [x, y] : {std::pair{a.out, b.out}, {a.dq, b.dq}, {a.dk, b.dk}, {a.dv, b.dv}})
    d = std::max(d, (x - y).abs().max().item<double>());
  return d;
}

// fp32: the two paths add the same terms in other orders (other kernels: a batch of documents vs one
// [T, T] masked row, SDPA's flash CPU kernel vs its masked path). Measured max |Δ| over out, dq, dk, dv
// on these O(1) values: ≤ 4.1e-6 over 557 layouts (5 runs of both tests); 2e-5 is 5× that. The negative
// controls differ by > 1.
constexpr double kTol = 2e-5;

void expect_same_as_dense(const Rows& rows, int64_t heads, int64_t kv_heads, std::optional<int64_t> window,
                          const std::string& what, uint64_t seed) {
  SCOPED_TRACE(what + ": " + describe(rows) + " heads " + std::to_string(heads) + "/" + std::to_string(kv_heads) +
               " window " + (window ? std::to_string(*window) : "none") + " seed " + std::to_string(seed));
  const at::Tensor seg = seg_tensor(rows);
  const AttentionLayout layout = AttentionLayout::for_rows(seg, seg.size(0), seg.size(1), window, at::kCPU);
  EXPECT_EQ(layout.kind, AttentionLayout::Kind::kSegments) << "packed or padded rows are planned per document";
  const Qkv x = random_qkv(seg.size(0), heads, kv_heads, seg.size(1), 8, seed);
  const Result a = dense(x, seg, window), b = segmented(x, seg, window);
  const double d = max_diff(a, b);
  EXPECT_LT(d, kTol);
  for (const at::Tensor& t : {b.out, b.dq, b.dk, b.dv}) EXPECT_TRUE(t.isfinite().all().item<bool>());
  // A padding query sees only itself: its output is its own v, exactly, as with the dense mask.
  const at::Tensor pad = seg.lt(0);  // [B, T]
  if (pad.any().item<bool>()) {
    const at::Tensor v_heads = x.v.repeat_interleave(heads / kv_heads, 1);  // [B, H, T, hd]
    const at::Tensor sel = pad.view({seg.size(0), 1, seg.size(1), 1}).expand_as(b.out);
    EXPECT_TRUE(at::equal(b.out.masked_select(sel), v_heads.masked_select(sel))) << "padding outputs are v";
  }
}

TEST(SegmentAttention, MatchesDenseMaskOnAwkwardLayouts) {
  const uint64_t seed = std::random_device{}();
  std::cout << "seed " << seed << "\n";
  const std::vector<std::pair<std::string, Rows>> cases = {
      {"one-token documents", {{0, 1, 2, 3, 4, 5, 6, 7}}},
      {"padding at the end", {{0, 0, 0, 1, 1, -1, -1, -1}}},
      {"padding at the start", {{-1, -1, 0, 0, 0, 0, 0, 0}}},
      {"a row all padding", {{0, 0, 1, 1, 1, 1, 2, -1}, {-1, -1, -1, -1, -1, -1, -1, -1}}},
      {"equal lengths across rows", {{0, 0, 0, 1, 1, 1, -1, -1}, {0, 0, 0, 1, 1, 1, 2, 2}, {0, 0, 1, 1, 1, 2, 2, 2}}},
      {"one document per row with padding", {{0, 0, 0, 0, 0, -1, -1, -1}, {0, 0, 0, 0, 0, 0, 0, 0}}},
      {"every token padding", {{-1, -1, -1, -1}, {-1, -1, -1, -1}}},
      {"ids not starting at 0, other negative padding", {{3, 3, 7, 7, 7, -2, -1, -5}}},
  };
  int n = 0;
  for (const auto& [what, rows] : cases)
    for (const auto& [h, kvh] : {std::pair<int64_t, int64_t>{2, 2}, {4, 2}, {4, 1}})
      for (const std::optional<int64_t> w : {std::optional<int64_t>{}, std::optional<int64_t>{1}, std::optional<int64_t>{2}})
        expect_same_as_dense(rows, h, kvh, w, what, seed + n++);
}

TEST(SegmentAttention, MatchesDenseMaskOnRandomPackedRows) {
  const uint64_t seed = std::random_device{}();
  std::cout << "seed " << seed << "\n";
  std::mt19937_64 rng(seed);
  for (int trial = 0; trial < 40; ++trial) {
    const int64_t batch = std::uniform_int_distribution<int64_t>(1, 4)(rng);
    const int64_t seq = std::uniform_int_distribution<int64_t>(1, 48)(rng);
    Rows rows;
    for (int64_t b = 0; b < batch; ++b) rows.push_back(random_row(seq, rng));
    const int64_t kv_heads = std::uniform_int_distribution<int64_t>(1, 2)(rng), heads = kv_heads * std::uniform_int_distribution<int64_t>(1, 3)(rng);
    std::optional<int64_t> window;
    if (trial % 2 == 1) window = std::uniform_int_distribution<int64_t>(1, 12)(rng);
    // A layout that is one document per row without padding is the is_causal path, not a plan.
    const at::Tensor seg = seg_tensor(rows);
    if (!window || *window >= seq) {
      const auto [lo, hi] = at::aminmax(seg);
      if (lo.item<int>() == 0 && hi.item<int>() == 0) continue;
    }
    expect_same_as_dense(rows, heads, kv_heads, window, "random trial " + std::to_string(trial), seed + 1000 + trial);
  }
}

// Moving one document boundary by one token changes the attention of the tokens around it, by far more
// than the tolerance: the comparison above would see a plan that cut documents in the wrong place.
TEST(SegmentAttention, NegativeControlShiftedBoundaryChangesOutput) {
  const uint64_t seed = std::random_device{}();
  std::cout << "seed " << seed << "\n";
  const Qkv x = random_qkv(1, 4, 2, 10, 8, seed);
  const Rows rows = {{0, 0, 0, 0, 1, 1, 1, 1, 1, -1}}, shifted = {{0, 0, 0, 0, 0, 1, 1, 1, 1, -1}};
  const Result a = segmented(x, seg_tensor(rows), std::nullopt), b = segmented(x, seg_tensor(shifted), std::nullopt);
  // Token 4 joins document 0 and tokens 5..8 lose their first key.
  const double moved = (a.out.narrow(2, 4, 5) - b.out.narrow(2, 4, 5)).abs().max().item<double>();
  std::cout << "shifted boundary: max |Δ out| " << moved << "\n";
  EXPECT_GT(moved, 1000 * kTol);
  EXPECT_TRUE(at::equal(a.out.narrow(2, 0, 4), b.out.narrow(2, 0, 4))) << "tokens before the boundary are untouched";
  // And a plan against the other layout's dense mask fails the comparison.
  EXPECT_GT(max_diff(dense(x, seg_tensor(rows), std::nullopt), b), 1000 * kTol);
}

TEST(SegmentAttention, LayoutKindsAndFallbacks) {
  using Kind = AttentionLayout::Kind;
  EXPECT_EQ(AttentionLayout::for_rows({}, 2, 6, std::nullopt, at::kCPU).kind, Kind::kCausal);
  EXPECT_EQ(AttentionLayout::for_rows(at::zeros({2, 6}, at::kInt), 2, 6, std::nullopt, at::kCPU).kind, Kind::kCausal);
  EXPECT_EQ(AttentionLayout::for_rows({}, 2, 6, 6, at::kCPU).kind, Kind::kCausal) << "a window covering the row";
  const AttentionLayout windowed = AttentionLayout::for_rows({}, 2, 6, 3, at::kCPU);
  ASSERT_EQ(windowed.kind, Kind::kSegments) << "a window shorter than the row is planned per row";
  EXPECT_EQ(windowed.plan->num_documents, 2);
  EXPECT_EQ(windowed.plan->window, 3);
  // A window no document reaches is dropped from the plan.
  EXPECT_FALSE(plan_segments(seg_tensor({{0, 0, 1, 1, 1}}), 3, at::kCPU)->window.has_value());

  // A document id that recurs after another id in its row: the mask lets the pieces see each other, so
  // per-document attention would differ; the layout falls back to the mask (and stays exact).
  const Rows recurring = {{0, 0, 1, 1, 0, 0, -1}};
  EXPECT_EQ(plan_segments(seg_tensor(recurring), std::nullopt, at::kCPU), nullptr);
  const AttentionLayout fallback = AttentionLayout::for_rows(seg_tensor(recurring), 1, 7, std::nullopt, at::kCPU);
  ASSERT_EQ(fallback.kind, Kind::kMask);
  const Qkv x = random_qkv(1, 2, 2, 7, 8, 5);
  EXPECT_LT(max_diff(dense(x, seg_tensor(recurring), std::nullopt), segmented(x, seg_tensor(recurring), std::nullopt)), kTol);

  // Plan structure: lengths grouped across rows, padding counted.
  const auto plan = plan_segments(seg_tensor({{0, 0, 1, 1, 1, -1}, {0, 0, 0, 1, 1, -1}}), std::nullopt, at::kCPU);
  ASSERT_NE(plan, nullptr);
  EXPECT_EQ(plan->num_documents, 4);
  EXPECT_EQ(plan->num_padding, 2);
  EXPECT_EQ(plan->max_length, 3);
  ASSERT_EQ(plan->groups.size(), 2u) << "lengths 2 and 3, two documents each";
  EXPECT_EQ(plan->groups[0].count, 2);
  EXPECT_EQ(plan->groups[1].count, 2);
  EXPECT_FALSE(plan->cu_seqlens.defined()) << "a CPU plan has no varlen offsets";

  EXPECT_THROW(AttentionLayout::for_rows(at::zeros({2, 5}, at::kInt), 2, 6, std::nullopt, at::kCPU), c10::Error);
  EXPECT_THROW(plan_segments(at::zeros({6}, at::kInt), std::nullopt, at::kCPU), c10::Error);
  const auto p = plan_segments(seg_tensor({{0, 0, 1}}), std::nullopt, at::kCPU);
  EXPECT_THROW(segment_attention_reference(at::zeros({1, 2, 4, 8}), at::zeros({1, 2, 4, 8}), at::zeros({1, 2, 4, 8}), *p),
               c10::Error) << "a plan for 3 tokens given 4";
  EXPECT_THROW(segment_attention_reference(at::zeros({1, 3, 3, 8}), at::zeros({1, 2, 3, 8}), at::zeros({1, 2, 3, 8}), *p),
               c10::Error) << "kv heads must divide heads";
  EXPECT_FALSE(varlen_flash_applies(at::zeros({1, 2, 3, 8}), at::zeros({1, 2, 3, 8}), *p)) << "CPU tensors";
  EXPECT_THROW(segment_attention_varlen(at::zeros({1, 2, 3, 8}), at::zeros({1, 2, 3, 8}), at::zeros({1, 2, 3, 8}), *p),
               c10::Error);
}

// The CUDA path: varlen flash attention in bf16 against the fp32 reference on the host, values and
// gradients, on awkward layouts. Tolerance with provenance: the dense-mask SDPA in bf16 on the same device
// has its own error against the same fp32 truth; flash must stay within 2× that error (+ a floor of one
// bf16 ulp at the values' scale), so the test measures flash against what the old path already did.
TEST(SegmentAttentionGpu, VarlenFlashMatchesReference) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  const at::Device cuda(at::kCUDA, 0);
  const uint64_t seed = std::random_device{}();
  std::cout << "seed " << seed << "\n";
  std::mt19937_64 rng(seed);
  std::vector<std::pair<Rows, std::optional<int64_t>>> cases = {
      {{{0, 1, 2, 3, 4, 5, 6, 7}}, std::nullopt},
      {{{0, 0, 0, 1, 1, -1, -1, -1}, {-1, -1, -1, -1, -1, -1, -1, -1}}, std::nullopt},
      {{{-1, -1, 0, 0, 0, 0, 0, 0}, {0, 0, 0, 1, 1, 1, 1, 1}}, 2},
      {{{-1, -1, -1, -1}}, std::nullopt},
  };
  for (int i = 0; i < 6; ++i) {  // long documents: several flash tiles, windows inside and across them
    Rows rows;
    for (int b = 0; b < 3; ++b) {
      std::vector<int> row;  // documents of 1..200 tokens, the last one cut, then 0..40 padding tokens
      const size_t fill = 300 - std::uniform_int_distribution<size_t>(0, 40)(rng);
      for (int doc = 0; row.size() < fill; ++doc)
        row.insert(row.end(), static_cast<size_t>(std::uniform_int_distribution<int>(1, 200)(rng)), doc);
      row.resize(fill);
      row.resize(300, -1);
      rows.push_back(row);
    }
    cases.push_back({rows, i % 2 ? std::optional<int64_t>(std::uniform_int_distribution<int64_t>(1, 150)(rng)) : std::nullopt});
  }
  int n = 0;
  for (const auto& [rows, window] : cases) {
    for (const auto& [heads, kv_heads, hd] : {std::tuple<int64_t, int64_t, int64_t>{4, 4, 64}, {8, 2, 128}}) {
      SCOPED_TRACE(describe(rows).substr(0, 200) + " heads " + std::to_string(heads) + "/" + std::to_string(kv_heads) +
                   " hd " + std::to_string(hd) + " window " + (window ? std::to_string(*window) : "none"));
      const at::Tensor seg = seg_tensor(rows);
      const AttentionLayout layout = AttentionLayout::for_rows(seg, seg.size(0), seg.size(1), window, cuda);
      ASSERT_EQ(layout.kind, AttentionLayout::Kind::kSegments);
      const Qkv x = random_qkv(seg.size(0), heads, kv_heads, seg.size(1), hd, seed + n++);
      const auto on = [&](const Qkv& c, at::Device d, at::ScalarType t) {
        return Qkv{c.q.to(d, t), c.k.to(d, t), c.v.to(d, t), c.grad_out.to(d, t)};
      };
      const Qkv xb = on(x, cuda, at::kBFloat16);
      if (!varlen_flash_applies(xb.q, xb.k, *layout.plan)) GTEST_SKIP() << "flash attention needs sm80+";
      const Result truth = run(x, [&](const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
        return segment_attention_reference(q, k, v, *plan_segments(seg, window, at::kCPU));
      });
      const Result flash = run(xb, [&](const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
        return segment_attention_varlen(q, k, v, *layout.plan);
      });
      const Result ref_bf16 = run(xb, [&](const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
        return segment_attention_reference(q, k, v, *layout.plan);
      });
      const at::Tensor mask = build_attention_mask(seg, seg.size(0), seg.size(1), window, cuda);
      const Result dense_bf16 = run(xb, [&](const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
        return at::scaled_dot_product_attention(q, k, v, mask, 0.0, false, std::nullopt, true);
      });
      const auto err = [&](const Result& r, int which) {
        const at::Tensor a = which == 0 ? r.out : which == 1 ? r.dq : which == 2 ? r.dk : r.dv;
        const at::Tensor t = which == 0 ? truth.out : which == 1 ? truth.dq : which == 2 ? truth.dk : truth.dv;
        return (a.to(at::kCPU, at::kFloat) - t).abs().max().item<double>();
      };
      const char* names[] = {"out", "dq", "dk", "dv"};
      for (int w = 0; w < 4; ++w) {
        const at::Tensor t = w == 0 ? truth.out : w == 1 ? truth.dq : w == 2 ? truth.dk : truth.dv;
        const double floor = t.abs().max().item<double>() * std::ldexp(1.0, -8);  // one bf16 ulp at the largest value
        const double tol = 2 * std::max(err(dense_bf16, w), err(ref_bf16, w)) + floor;
        EXPECT_LT(err(flash, w), tol) << names[w] << ": dense bf16 error " << err(dense_bf16, w) << ", reference bf16 "
                                      << err(ref_bf16, w);
      }
      const at::Tensor pad = seg.lt(0).to(cuda);
      if (pad.any().item<bool>()) {
        const at::Tensor v_heads = xb.v.repeat_interleave(heads / kv_heads, 1);
        const at::Tensor sel = pad.view({seg.size(0), 1, seg.size(1), 1}).expand_as(flash.out.to(cuda));
        EXPECT_TRUE(at::equal(flash.out.to(cuda).masked_select(sel), v_heads.masked_select(sel))) << "padding outputs are v";
      }
    }
  }
}

}  // namespace
}  // namespace qtrain
