// The bitsandbytes 4-bit weight layout inside Hugging Face safetensors checkpoints (formats.md §1.8-1.9):
// for a weight `P.weight` the packed codes, `.absmax`, `.quant_map`, `.nested_absmax`,
// `.nested_quant_map` and the JSON blob `.quant_state.bitsandbytes__nf4|fp4`. Reading and writing it
// lets qtrain load `*-bnb-4bit` checkpoints and write ones transformers loads.
#pragma once

#include <map>
#include <string>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include "data/io/safetensors.h"
#include "ops/nf4.h"

namespace qtrain::bnb {

// True when the checkpoint stores `weight_name` (e.g. "model.layers.0.mlp.up_proj.weight") in 4 bits.
bool is_quantized(const safetensors::Checkpoint& ckpt, const std::string& weight_name);

// Rebuilds the quantization state of `weight_name` on `device`, validating every piece against the
// others (sizes, dtypes, the JSON blob). Throws InputError naming the file and tensor.
ops::QuantState load(const safetensors::Checkpoint& ckpt, const std::string& weight_name, at::Device device);

// The tensors that represent `state` under `weight_name`, exactly as bitsandbytes serialises them.
std::map<std::string, at::Tensor> to_tensors(const std::string& weight_name, const ops::QuantState& state);

// The config.json `quantization_config` object transformers writes for these parameters.
nlohmann::ordered_json quantization_config(const ops::QuantParams& params, at::ScalarType compute_dtype);

// Python's repr() of a double (shortest round-trip digits, exponent form below 1e-4 and from 1e16):
// the quant_state blob is json.dumps output, and we write it byte for byte.
std::string python_float_repr(double v);

}  // namespace qtrain::bnb
