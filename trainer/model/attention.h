// The model's one attention call: softmax(q·kᵀ/√d)·v over the keys each query may see, for packed and
// padded rows without a dense [batch, 1, seq, seq] mask.
//
// Which keys a query sees is data/dataset/batching.h's rule (attention_mask.h builds it as a mask): its
// own document's earlier-or-equal tokens, within the sliding window if the model has one; a padding query
// sees itself only. With segment ids on the host, a batch is planned once per forward (SegmentPlan) into
// its documents, and every layer then attends per document:
//   - reference (any device, any dtype): documents of equal length from all rows gathered into one
//     batched SDPA call with is_causal (a [L, L] banded mask when a window shorter than L applies), so the
//     cost is Σ L_i², not B·T²; on the CPU SDPA takes its fused flash kernel, as no mask is passed.
//   - varlen flash (CUDA, bf16/fp16, sm80+, head_dim a multiple of 8 up to 256): the real tokens as
//     [total, heads, head_dim] with cumulative document lengths, at::_flash_attention_forward (the
//     kernel SDPA's flash path runs; autograd has its backward), window_size_left = window - 1.
// Padding positions get exactly what the dense mask gives them, v of their own position (a softmax
// over one key is 1): finite, deterministic, and never seen by a real token or the loss.
// The dense mask remains where planning does not apply: segment ids already on a device (reading them
// would be a device sync), a document id that recurs after another one in its row (the mask lets such
// pieces see each other; per-document attention would not), and cached decoding.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include <ATen/ATen.h>

namespace qtrain {

// The documents of one batch, read from host segment ids once and shared by every layer (and by the
// recompute of a layer in backward, so it is immutable). Index tensors live on the attention's device.
struct SegmentPlan {
  int64_t batch = 0, seq = 0;
  std::optional<int64_t> window;  // only when shorter than the longest document (else it changes nothing)
  int64_t num_documents = 0, max_length = 0, num_padding = 0;

  // Reference path: the documents of one length L, from every row.
  struct Group {
    int64_t length = 0, count = 0;
    at::Tensor tokens;  // [count * length] int64: flat b·seq + t of each document's tokens, in order
    at::Tensor mask;    // [L, L] bool banded causal mask when the window is shorter than L, else undefined
  };
  std::vector<Group> groups;
  at::Tensor padding;           // [num_padding] int64 flat indices; undefined when there is none
  at::Tensor grouped_inverse;   // [batch*seq] int64: where each token sits in cat(groups' tokens, padding)

  // Varlen path (built only for CUDA plans): the real tokens in row order, documents contiguous.
  at::Tensor real_tokens;       // [total] int64 flat indices; undefined when there is no padding (all tokens)
  at::Tensor cu_seqlens;        // [num_documents + 1] int32, on the device
  at::Tensor varlen_inverse;    // [batch*seq] int64 into cat(real tokens, padding); undefined without padding
};

// Plans the documents of segment_ids [batch, seq] (a CPU tensor, any integer dtype; document index per
// token, -1 for padding) for attention on `device`. Returns null when per-document attention would not
// be exact: a document id that appears again after another id in its row.
std::shared_ptr<const SegmentPlan> plan_segments(const at::Tensor& segment_ids, std::optional<int64_t> sliding_window,
                                                 at::Device device);

// How the queries of one forward may attend: built once per batch, passed to every layer.
struct AttentionLayout {
  enum class Kind {
    kCausal,    // one document per row, no padding: SDPA's is_causal (flash on CUDA); queries = keys
    kAllKeys,   // every query sees every key (one decoding query whose window covers the cache)
    kMask,      // an explicit [batch|1, 1, queries, keys] bool mask (attention_mask.h)
    kSegments,  // per-document attention from a SegmentPlan
  };
  Kind kind = Kind::kCausal;
  at::Tensor mask;                          // kMask
  std::shared_ptr<const SegmentPlan> plan;  // kSegments

  // For rows of a batch: segment_ids [batch, seq] (undefined = one document per row, no padding). The
  // is_causal fast path when segment ids are undefined or all 0 on the host and no window shorter than
  // seq applies (as build_attention_mask decides); a plan for other host segment ids; the dense mask
  // for segment ids on a device or when plan_segments declines.
  static AttentionLayout for_rows(const at::Tensor& segment_ids, int64_t batch, int64_t seq,
                                  std::optional<int64_t> sliding_window, at::Device device);
  // For cached decoding of `fresh` queries after `cached` keys: build_cached_attention_mask's result
  // (undefined: plain causal when the cache was empty, else a single query that sees every key).
  static AttentionLayout for_cache(const at::Tensor& mask, int64_t cached, int64_t fresh);
};

// q [batch, heads, queries, head_dim], k/v [batch, kv_heads, keys, head_dim] (kv_heads divides heads:
// grouped-query attention, query head h reads kv head h / (heads / kv_heads), as SDPA's enable_gqa)
// → [batch, heads, queries, head_dim]. Dispatches on the layout, and for kSegments on the device and
// dtype (varlen flash where it applies, else the reference path).
at::Tensor attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const AttentionLayout& layout);

// The two per-document implementations, exposed so tests can compare them. Same shapes as attend;
// queries = keys = plan.seq.
at::Tensor segment_attention_reference(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                       const SegmentPlan& plan);
// Whether segment_attention_varlen can run these tensors (CUDA build, CUDA tensors, bf16/fp16, sm80+,
// head_dim % 8 == 0 and <= 256, a plan made for CUDA).
bool varlen_flash_applies(const at::Tensor& q, const at::Tensor& k, const SegmentPlan& plan);
at::Tensor segment_attention_varlen(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                    const SegmentPlan& plan);

}  // namespace qtrain
