// Rotary position embeddings, Hugging Face convention (rotate_half: the first and second halves of
// each head are the pair), with the default, linear and llama3 frequency schedules.
#pragma once

#include <ATen/ATen.h>

#include "data/io/hf_config.h"

namespace qtrain {

// inv_freq [head_dim / 2], float32, computed the way transformers does (float32 from int64 arange)
// so fp32 logits match it to rounding.
at::Tensor rope_inv_freq(const RopeConfig& rope, int64_t head_dim);

struct RopeTables {
  at::Tensor cos;  // [batch, seq, head_dim], in the compute dtype
  at::Tensor sin;  // [batch, seq, head_dim]
};

// positions [batch, seq] int64 → cos/sin tables (computed in float32, then cast to `dtype`).
RopeTables rope_tables(const at::Tensor& inv_freq, const at::Tensor& positions, at::ScalarType dtype);

// x [batch, heads, seq, head_dim] → x·cos + rotate_half(x)·sin (ops/rotary.h: one fused pass on the CPU)
at::Tensor apply_rope(const at::Tensor& x, const RopeTables& t);

}  // namespace qtrain
