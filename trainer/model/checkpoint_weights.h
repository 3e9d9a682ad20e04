// Weights from a safetensors checkpoint (one file or shards, already bnb-4bit or full precision),
// checked tensor by tensor against the shapes config.json implies, converted to the load dtype and
// device, and quantized while loading when asked. Every error names the checkpoint file and the tensor.
#pragma once

#include <memory>
#include <optional>

#include "data/io/awq_settings.h"
#include "data/io/gptq_settings.h"
#include "data/io/safetensors.h"
#include "trainer/model/weight_source.h"

namespace qtrain {

// `ckpt` and `opts` must outlive the source. A GPTQ v1 checkpoint's linears (P.qweight, ...) load
// dequantized, in the load dtype or, when opts.quantize asks, re-quantized to NF4 from the fp32
// dequantized weight; so do an AWQ GEMM checkpoint's (awq_format.h). Their bits and group_size come from
// `gptq` / `awq` (ModelConfig::gptq / ::awq) or, when neither is given, from the checkpoint directory's
// config.json.
std::unique_ptr<WeightSource> checkpoint_weights(const safetensors::Checkpoint& ckpt, const LoadOptions& opts,
                                                 std::optional<GptqSettings> gptq = std::nullopt,
                                                 std::optional<AwqSettings> awq = std::nullopt);

}  // namespace qtrain
