// Activation recompute (gradient checkpointing) for one decoder layer: the forward keeps only the
// layer's input; backward runs the layer again with grad enabled and backpropagates through it.
// Non-reentrant pitfalls avoided by construction: the trainable parameters are explicit inputs of the
// autograd node (so they get gradients even when the input does not require grad), and the dropout
// generator is snapshotted before the forward and replayed in backward (identical masks).
#pragma once

#include <functional>
#include <vector>

#include <ATen/ATen.h>

#include "trainer/model/linear.h"

namespace qtrain {

using LayerFn = std::function<at::Tensor(const at::Tensor& h, const RunContext* ctx)>;

// h [batch, seq, hidden] → layer(h) [batch, seq, hidden]; params = the layer's trainable tensors.
at::Tensor recompute_layer(const LayerFn& layer, const at::Tensor& h, const std::vector<at::Tensor>& params,
                           const RunContext* ctx);

}  // namespace qtrain
