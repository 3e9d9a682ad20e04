// Rotary position embedding of queries or keys, Hugging Face's convention (rotate_half: the first and
// second halves of each head form the pairs): out = x·cos + rotate_half(x)·sin, rotate_half(x) = cat(−x₂, x₁).
// On the CPU one fused pass forward and one backward (the composition makes six passes forward and, in
// backward, two zero-filled slice gradients of the full size); it rounds as the composition does, so the
// two agree bit for bit. Other devices run the composition (rotary_reference) for now.
#pragma once

#include <ATen/ATen.h>

namespace qtrain::ops {

// x [batch, heads, seq, head_dim] (any strides, head_dim even), cos/sin [batch, seq, head_dim] in x's dtype
// (each half of a row holding the same frequencies, as rope_tables builds them, is not assumed).
// Differentiable in x; the tables are constants. Returns x's shape and dtype.
at::Tensor rotary(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);

// The same as an ATen composition: the oracle for the fused kernel and the path off the CPU.
at::Tensor rotary_reference(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);

}  // namespace qtrain::ops
