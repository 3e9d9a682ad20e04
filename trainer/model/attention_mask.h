// The one attention-mask builder of the model: boolean masks for SDPA, [batch, 1, seq, seq]
// (true = may attend), from segment ids. segment_ids [batch, seq] (any integer dtype) hold the document
// index of each token, -1 for padding: a query attends to earlier-or-equal keys of its own document
// (data/dataset/batching.h owns that rule), within the sliding window if the model has one. A padding
// query attends to itself only, so no softmax row is empty (an empty row is NaN in SDPA); its output is
// never used. A padding mask is the special case of one document per row (segment_ids_from_padding).
#pragma once

#include <cstdint>
#include <optional>

#include <ATen/ATen.h>

namespace qtrain {

// The mask on `device`, or an undefined tensor when plain causal attention is exact, so SDPA can take
// its is_causal kernels (flash on CUDA), as transformers does: segment_ids undefined (one document per
// row, no padding) or all 0 as seen on the host, and no window shorter than `seq` (a window that
// covers the row changes nothing). Segment ids already on a device are not inspected (that would be a
// device sync per forward): they always get an explicit mask, which is correct, if slower.
at::Tensor build_attention_mask(const at::Tensor& segment_ids, int64_t batch, int64_t seq,
                                std::optional<int64_t> sliding_window, at::Device device);

// Incremental decoding (LlamaModel::forward_cached): `fresh` new queries at positions cached .. cached+fresh-1
// over every key 0 .. cached+fresh-1: key k is visible to query q when k <= q and, with a window,
// k > q - window (the rule above, one document, no padding). [1, 1, fresh, cached+fresh] on `device`, or
// undefined when nothing is hidden from any query: an empty cache with plain causal attention (then
// build_attention_mask's is_causal path, the same kernel as forward()), or a single query whose window
// covers every key.
at::Tensor build_cached_attention_mask(int64_t cached, int64_t fresh, std::optional<int64_t> sliding_window,
                                       at::Device device);

// attention_mask [batch, seq] (1 = token, 0 = padding; transformers' convention) → segment ids
// [batch, seq] int32 (0 = token, -1 = padding), on the mask's device.
at::Tensor segment_ids_from_padding(const at::Tensor& attention_mask);

}  // namespace qtrain
