// Weights from a safetensors checkpoint (one file or shards, already bnb-4bit or full precision),
// checked tensor by tensor against the shapes config.json implies, converted to the load dtype and
// device, and quantized while loading when asked. Every error names the checkpoint file and the tensor.
#pragma once

#include <memory>

#include "data/io/safetensors.h"
#include "trainer/model/weight_source.h"

namespace qtrain {

// `ckpt` and `opts` must outlive the source.
std::unique_ptr<WeightSource> checkpoint_weights(const safetensors::Checkpoint& ckpt, const LoadOptions& opts);

}  // namespace qtrain
