#include "trainer/model/attention_mask.h"

#include "data/dataset/batching.h"
#include "trainer/model/host_to_device.h"

namespace qtrain {

namespace {

// True when the host can tell, without a device sync, that every token is in document 0 (no packing,
// no padding). Only CPU tensors are read: the loader builds its batches there.
bool single_document_on_host(const at::Tensor& segment_ids) {
  if (!segment_ids.defined()) return true;
  if (!segment_ids.device().is_cpu() || segment_ids.numel() == 0) return false;
  const auto [lo, hi] = at::aminmax(segment_ids);
  return lo.item<int64_t>() == 0 && hi.item<int64_t>() == 0;
}

}  // namespace

at::Tensor build_attention_mask(const at::Tensor& segment_ids, int64_t batch, int64_t seq,
                                std::optional<int64_t> sliding_window, at::Device device) {
  TORCH_CHECK(!segment_ids.defined() || segment_ids.sizes() == at::IntArrayRef({batch, seq}),
              "build_attention_mask: segment_ids must be [batch, seq] = [", batch, ", ", seq, "], found ",
              segment_ids.sizes());
  TORCH_CHECK(!sliding_window || *sliding_window > 0, "build_attention_mask: sliding_window must be positive, found ",
              *sliding_window);
  if (sliding_window && *sliding_window >= seq) sliding_window.reset();
  if (!sliding_window && single_document_on_host(segment_ids)) return {};  // plain causal: SDPA's is_causal

  const at::Tensor seg = segment_ids.defined()
                             ? host_to_device(segment_ids, device)
                             : at::zeros({batch, seq}, at::TensorOptions().dtype(at::kInt).device(device));
  at::Tensor allowed = segment_attention_mask(seg);  // [batch, 1, seq, seq]: same document, causal, padding → self
  if (!sliding_window) return allowed.contiguous();
  const auto lopts = at::TensorOptions().dtype(at::kLong).device(device);
  const at::Tensor qi = at::arange(seq, lopts).view({seq, 1}), kj = at::arange(seq, lopts).view({1, seq});
  const at::Tensor diag = at::eye(seq, at::TensorOptions().dtype(at::kBool).device(device));
  // The diagonal stays allowed, so a padding query keeps its one key.
  return allowed.logical_and((kj > qi - *sliding_window).logical_or(diag).view({1, 1, seq, seq})).contiguous();
}

at::Tensor build_cached_attention_mask(int64_t cached, int64_t fresh, std::optional<int64_t> sliding_window,
                                       at::Device device) {
  TORCH_CHECK(cached >= 0 && fresh > 0, "build_cached_attention_mask: ", fresh, " new tokens after ", cached);
  if (cached == 0) return build_attention_mask({}, 1, fresh, sliding_window, device);
  const int64_t total = cached + fresh;
  if (sliding_window && *sliding_window >= total) sliding_window.reset();
  if (fresh == 1 && !sliding_window) return {};
  const auto lopts = at::TensorOptions().dtype(at::kLong).device(device);
  const at::Tensor qi = at::arange(cached, total, lopts).view({fresh, 1}), kj = at::arange(total, lopts).view({1, total});
  at::Tensor allowed = kj <= qi;
  if (sliding_window) allowed = allowed.logical_and(kj > qi - *sliding_window);
  return allowed.view({1, 1, fresh, total}).contiguous();
}

at::Tensor segment_ids_from_padding(const at::Tensor& attention_mask) {
  TORCH_CHECK(attention_mask.dim() == 2, "attention_mask must be [batch, seq], found ", attention_mask.sizes());
  return at::where(attention_mask.to(at::kBool), 0, -1).to(at::kInt);
}

}  // namespace qtrain
