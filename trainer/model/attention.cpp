#include "trainer/model/attention.h"

#include <limits>
#include <map>
#include <numeric>
#include <unordered_set>

#include "trainer/model/attention_mask.h"
#include "trainer/model/host_to_device.h"

#if defined(QTRAIN_WITH_CUDA)
#include <ATen/cuda/CUDAContext.h>
#endif

namespace qtrain {

namespace {

at::Tensor long_tensor(const std::vector<int64_t>& values, at::Device device) {
  return host_to_device(at::tensor(values, at::TensorOptions().dtype(at::kLong)), device);
}

// perm[i] = the flat token at position i of a concatenation → inverse[token] = i, so
// cat(...).index_select(0, inverse) puts every token back in row order.
at::Tensor inverse_of(const std::vector<int64_t>& perm, at::Device device) {
  std::vector<int64_t> inverse(perm.size());
  for (size_t i = 0; i < perm.size(); ++i) inverse[static_cast<size_t>(perm[i])] = static_cast<int64_t>(i);
  return long_tensor(inverse, device);
}

// True when the host can tell, without a device sync, that every token is in document 0 (no packing,
// no padding); the rule of build_attention_mask's is_causal path.
bool single_document_on_host(const at::Tensor& segment_ids) {
  if (!segment_ids.defined()) return true;
  if (!segment_ids.device().is_cpu() || segment_ids.numel() == 0) return false;
  const auto [lo, hi] = at::aminmax(segment_ids);
  return lo.item<int64_t>() == 0 && hi.item<int64_t>() == 0;
}

struct Dims {
  int64_t batch, heads, kv_heads, seq, head_dim;
};

Dims check_shapes(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const SegmentPlan& plan,
                  const char* who) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, who, ": q, k, v must be [batch, heads, seq, head_dim], found ",
              q.sizes(), ", ", k.sizes(), ", ", v.sizes());
  const Dims d{q.size(0), q.size(1), k.size(1), q.size(2), q.size(3)};
  TORCH_CHECK(d.batch == plan.batch && d.seq == plan.seq, who, ": the plan is for [", plan.batch, ", ", plan.seq,
              "] tokens, q is ", q.sizes());
  TORCH_CHECK(k.sizes() == v.sizes() && k.size(0) == d.batch && k.size(2) == d.seq && k.size(3) == d.head_dim, who,
              ": k and v must be [", d.batch, ", kv_heads, ", d.seq, ", ", d.head_dim, "], found ", k.sizes(), " and ",
              v.sizes());
  TORCH_CHECK(d.kv_heads > 0 && d.heads % d.kv_heads == 0, who, ": kv_heads ", d.kv_heads, " must divide heads ", d.heads);
  return d;
}

// [batch, heads, seq, hd] → [batch*seq, heads, hd], token-major; a view when x is a transpose of
// [batch, seq, heads, hd] memory (as the model's projections make it).
at::Tensor token_major(const at::Tensor& x) {
  return x.transpose(1, 2).reshape({x.size(0) * x.size(2), x.size(1), x.size(3)});
}

// What a padding query gets from the dense mask: it sees only its own key, softmax over one score is
// exactly 1, so its output is its own v (of the kv head its query head reads). vt [batch*seq, kv_heads, hd]
// → [num_padding, heads, hd].
at::Tensor padding_outputs(const at::Tensor& vt, const at::Tensor& padding, int64_t group) {
  const at::Tensor pv = vt.index_select(0, padding);
  return group == 1 ? pv : pv.repeat_interleave(group, /*dim=*/1);
}

}  // namespace

std::shared_ptr<const SegmentPlan> plan_segments(const at::Tensor& segment_ids, std::optional<int64_t> sliding_window,
                                                 at::Device device) {
  TORCH_CHECK(segment_ids.dim() == 2, "plan_segments: segment_ids must be [batch, seq], found ", segment_ids.sizes());
  TORCH_CHECK(segment_ids.device().is_cpu(), "plan_segments: segment_ids must be on the host (reading them from ",
              segment_ids.device(), " would be a device sync)");
  TORCH_CHECK(!sliding_window || *sliding_window > 0, "plan_segments: sliding_window must be positive, found ",
              *sliding_window);
  const at::Tensor seg = segment_ids.to(at::kLong).contiguous();
  const int64_t batch = seg.size(0), seq = seg.size(1);
  const int64_t* s = seg.const_data_ptr<int64_t>();

  struct Doc {
    int64_t start, length;  // flat b·seq + t of its first token
  };
  std::vector<Doc> docs;          // row order, then position
  std::vector<int64_t> padding;   // flat indices, ascending
  for (int64_t b = 0; b < batch; ++b) {
    std::unordered_set<int64_t> seen;
    for (int64_t t = 0; t < seq;) {
      const int64_t id = s[b * seq + t];
      if (id < 0) {  // any negative id is padding, as in segment_attention_mask
        padding.push_back(b * seq + t++);
        continue;
      }
      int64_t end = t;
      while (end < seq && s[b * seq + end] == id) ++end;
      // The mask lets every piece of a recurring id see the earlier pieces; per-document attention would not.
      if (!seen.insert(id).second) return nullptr;
      docs.push_back({b * seq + t, end - t});
      t = end;
    }
  }

  auto plan = std::make_shared<SegmentPlan>();
  plan->batch = batch;
  plan->seq = seq;
  plan->num_documents = static_cast<int64_t>(docs.size());
  plan->num_padding = static_cast<int64_t>(padding.size());
  for (const Doc& d : docs) plan->max_length = std::max(plan->max_length, d.length);
  if (sliding_window && *sliding_window < plan->max_length) plan->window = sliding_window;
  if (!padding.empty()) plan->padding = long_tensor(padding, device);

  // Reference path: documents grouped by length (ascending), each group's tokens in document order.
  std::map<int64_t, std::vector<int64_t>> starts_by_length;
  for (const Doc& d : docs) starts_by_length[d.length].push_back(d.start);
  std::vector<int64_t> grouped;  // the concatenation order: every group's tokens, then padding
  grouped.reserve(static_cast<size_t>(batch * seq));
  for (const auto& [length, starts] : starts_by_length) {
    SegmentPlan::Group g;
    g.length = length;
    g.count = static_cast<int64_t>(starts.size());
    std::vector<int64_t> tokens;
    tokens.reserve(starts.size() * static_cast<size_t>(length));
    for (const int64_t start : starts)
      for (int64_t i = 0; i < length; ++i) tokens.push_back(start + i);
    grouped.insert(grouped.end(), tokens.begin(), tokens.end());
    g.tokens = long_tensor(tokens, device);
    if (plan->window && *plan->window < length) {
      // Query i sees keys j with i - window < j <= i (the band of build_attention_mask).
      const auto lopts = at::TensorOptions().dtype(at::kLong).device(device);
      const at::Tensor qi = at::arange(length, lopts).view({length, 1}), kj = at::arange(length, lopts).view({1, length});
      g.mask = kj.le(qi).logical_and(kj.gt(qi - *plan->window));  // [L, L]
    }
    plan->groups.push_back(std::move(g));
  }
  grouped.insert(grouped.end(), padding.begin(), padding.end());
  plan->grouped_inverse = inverse_of(grouped, device);

  // Varlen path: only a CUDA plan needs it (the host work and copies are small, but not free).
  if (device.is_cuda()) {
    std::vector<int32_t> cu{0};
    std::vector<int64_t> order;  // real tokens in row order, then padding
    order.reserve(static_cast<size_t>(batch * seq));
    for (const Doc& d : docs) {
      for (int64_t i = 0; i < d.length; ++i) order.push_back(d.start + i);
      TORCH_CHECK(cu.back() + d.length <= std::numeric_limits<int32_t>::max(), "plan_segments: ", batch * seq,
                  " tokens overflow flash attention's int32 offsets");
      cu.push_back(cu.back() + static_cast<int32_t>(d.length));
    }
    plan->cu_seqlens = host_to_device(at::tensor(cu, at::TensorOptions().dtype(at::kInt)), device);
    if (!padding.empty()) {
      plan->real_tokens = long_tensor(order, device);
      order.insert(order.end(), padding.begin(), padding.end());
      plan->varlen_inverse = inverse_of(order, device);
    }
  }
  return plan;
}

AttentionLayout AttentionLayout::for_rows(const at::Tensor& segment_ids, int64_t batch, int64_t seq,
                                          std::optional<int64_t> sliding_window, at::Device device) {
  TORCH_CHECK(!segment_ids.defined() || segment_ids.sizes() == at::IntArrayRef({batch, seq}),
              "attention: segment_ids must be [batch, seq] = [", batch, ", ", seq, "], found ", segment_ids.sizes());
  TORCH_CHECK(!sliding_window || *sliding_window > 0, "attention: sliding_window must be positive, found ", *sliding_window);
  if (sliding_window && *sliding_window >= seq) sliding_window.reset();  // a window that covers the row changes nothing
  AttentionLayout out;
  if (!sliding_window && single_document_on_host(segment_ids)) return out;  // kCausal: SDPA's is_causal
  if (!segment_ids.defined() || segment_ids.device().is_cpu()) {
    const at::Tensor seg = segment_ids.defined() ? segment_ids : at::zeros({batch, seq}, at::kInt);
    if (auto plan = plan_segments(seg, sliding_window, device)) {
      out.kind = Kind::kSegments;
      out.plan = std::move(plan);
      return out;
    }
  }
  out.kind = Kind::kMask;
  out.mask = build_attention_mask(segment_ids, batch, seq, sliding_window, device);
  TORCH_CHECK(out.mask.defined(), "attention: expected a mask for segment ids that are not one document per row");
  return out;
}

AttentionLayout AttentionLayout::for_cache(const at::Tensor& mask, int64_t cached, int64_t fresh) {
  AttentionLayout out;
  if (mask.defined()) {
    out.kind = Kind::kMask;
    out.mask = mask;
  } else if (cached > 0) {
    TORCH_CHECK(fresh == 1, "attention: ", fresh, " queries after ", cached, " cached keys need an explicit mask");
    out.kind = Kind::kAllKeys;
  }
  return out;
}

at::Tensor segment_attention_reference(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                       const SegmentPlan& plan) {
  const Dims d = check_shapes(q, k, v, plan, "segment_attention_reference");
  if (d.batch * d.seq == 0) return at::empty_like(q);
  const at::Tensor qt = token_major(q), kt = token_major(k), vt = token_major(v);  // [batch*seq, heads|kv_heads, hd]
  std::vector<at::Tensor> parts;
  parts.reserve(plan.groups.size() + 1);
  for (const SegmentPlan::Group& g : plan.groups) {
    // [count*L, h, hd] → [count, h, L, hd]: one SDPA call for every document of this length.
    const auto take = [&](const at::Tensor& x, int64_t heads) {
      return x.index_select(0, g.tokens).view({g.count, g.length, heads, d.head_dim}).transpose(1, 2);
    };
    const at::Tensor o = at::scaled_dot_product_attention(
        take(qt, d.heads), take(kt, d.kv_heads), take(vt, d.kv_heads),
        g.mask.defined() ? std::optional<at::Tensor>(g.mask) : std::nullopt, /*dropout_p=*/0.0,
        /*is_causal=*/!g.mask.defined(), /*scale=*/std::nullopt, /*enable_gqa=*/true);  // [count, heads, L, hd]
    parts.push_back(o.transpose(1, 2).reshape({g.count * g.length, d.heads, d.head_dim}));
  }
  if (plan.num_padding > 0) parts.push_back(padding_outputs(vt, plan.padding, d.heads / d.kv_heads));
  const at::Tensor out = at::cat(parts).index_select(0, plan.grouped_inverse);  // [batch*seq, heads, hd], row order
  return out.view({d.batch, d.seq, d.heads, d.head_dim}).transpose(1, 2);
}

bool varlen_flash_applies(const at::Tensor& q, const at::Tensor& k, const SegmentPlan& plan) {
#if defined(QTRAIN_WITH_CUDA)
  if (!q.is_cuda() || !plan.cu_seqlens.defined() || plan.cu_seqlens.device() != q.device()) return false;
  if (q.scalar_type() != at::kBFloat16 && q.scalar_type() != at::kHalf) return false;
  if (k.scalar_type() != q.scalar_type() || q.size(-1) % 8 != 0 || q.size(-1) > 256) return false;
  // FlashAttention-2 in libtorch runs on Ampere (sm80) and newer; the properties are cached, no sync.
  return at::cuda::getDeviceProperties(q.device().index())->major >= 8;
#else
  (void)q, (void)k, (void)plan;
  return false;
#endif
}

at::Tensor segment_attention_varlen(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                    const SegmentPlan& plan) {
  const Dims d = check_shapes(q, k, v, plan, "segment_attention_varlen");
  TORCH_CHECK(varlen_flash_applies(q, k, plan), "segment_attention_varlen: needs a CUDA build, bf16/fp16 CUDA tensors "
              "on sm80+, head_dim a multiple of 8 up to 256 and a plan made for that device; found ", q.scalar_type(),
              " on ", q.device(), ", head_dim ", d.head_dim);
  TORCH_CHECK(v.scalar_type() == q.scalar_type(), "segment_attention_varlen: v is ", v.scalar_type(), ", q ", q.scalar_type());
  const at::Tensor qt = token_major(q).contiguous(), kt = token_major(k).contiguous(), vt = token_major(v).contiguous();
  const int64_t group = d.heads / d.kv_heads;
  if (plan.num_documents == 0) {  // every token is padding
    return padding_outputs(vt, plan.padding, group).view({d.batch, d.seq, d.heads, d.head_dim}).transpose(1, 2);
  }
  const bool padded = plan.num_padding > 0;
  const auto real = [&](const at::Tensor& x) { return padded ? x.index_select(0, plan.real_tokens) : x; };
  // Query i of a document sees keys i - window_left .. i (is_causal sets window_right to 0); the mask's
  // band is i - window < j <= i, so window_left = window - 1.
  const std::optional<int64_t> left = plan.window ? std::optional<int64_t>(*plan.window - 1) : std::nullopt;
  const std::optional<int64_t> right = plan.window ? std::optional<int64_t>(0) : std::nullopt;
  // [total, heads, hd]; GQA natively (kv head h / group), as SDPA's enable_gqa.
  at::Tensor out = std::get<0>(at::_flash_attention_forward(
      real(qt), real(kt), real(vt), plan.cu_seqlens, plan.cu_seqlens, plan.max_length, plan.max_length,
      /*dropout_p=*/0.0, /*is_causal=*/true, /*return_debug_mask=*/false, /*scale=*/std::nullopt, left, right));
  if (padded) out = at::cat({out, padding_outputs(vt, plan.padding, group)}).index_select(0, plan.varlen_inverse);
  return out.view({d.batch, d.seq, d.heads, d.head_dim}).transpose(1, 2);
}

at::Tensor attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const AttentionLayout& layout) {
  using Kind = AttentionLayout::Kind;
  switch (layout.kind) {
    case Kind::kCausal:
      // SDPA aligns is_causal to the top-left corner: right only when queries and keys are the same positions.
      TORCH_CHECK(q.size(2) == k.size(2), "attention: is_causal needs as many queries as keys, found ", q.size(2),
                  " queries and ", k.size(2), " keys");
      return at::scaled_dot_product_attention(q, k, v, std::nullopt, 0.0, /*is_causal=*/true, std::nullopt,
                                              /*enable_gqa=*/true);
    case Kind::kAllKeys:
      return at::scaled_dot_product_attention(q, k, v, std::nullopt, 0.0, /*is_causal=*/false, std::nullopt,
                                              /*enable_gqa=*/true);
    case Kind::kMask:
      TORCH_CHECK(layout.mask.defined(), "attention: a mask layout without a mask");
      return at::scaled_dot_product_attention(q, k, v, layout.mask, 0.0, /*is_causal=*/false, std::nullopt,
                                              /*enable_gqa=*/true);
    case Kind::kSegments:
      TORCH_CHECK(layout.plan, "attention: a segment layout without a plan");
      return varlen_flash_applies(q, k, *layout.plan) ? segment_attention_varlen(q, k, v, *layout.plan)
                                                      : segment_attention_reference(q, k, v, *layout.plan);
  }
  TORCH_CHECK(false, "attention: unknown layout kind");
}

}  // namespace qtrain
