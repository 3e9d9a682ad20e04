// The one random initialiser of the Llama family, for models made from nothing: the benchmarks of real
// shapes (LlamaModel::random) and the quick start's base (trainer/cli/quickstart_model.cpp, which writes
// LlamaModel::random's weights). Scales keep activations O(1) through the layers and give the (frozen)
// LM head a usable logit range:
//   norms 1 · embeddings N(0, 1) · decoder linears N(0, 1/in), biases 0 · lm_head N(0, 4/hidden)
// (the LM head reads unit-RMS hidden states, so its logits have std 2). Drawn in float32 on the load
// device from `gen`, one tensor at a time in the order the model asks for them, then cast to the load
// dtype (and quantized right away when the options say so).
#pragma once

#include <memory>

#include <ATen/ATen.h>

#include "trainer/model/weight_source.h"

namespace qtrain {

// `opts` must outlive the source; `gen` must be a generator of opts.device.
std::unique_ptr<WeightSource> random_weights(const LoadOptions& opts, at::Generator gen);

}  // namespace qtrain
