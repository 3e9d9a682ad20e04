// The GPTQ v1 packed checkpoint layout (AutoGPTQ, and GPTQModel `checkpoint_format: "gptq"`;
// formats.md §5.6-5.7) that vLLM, transformers (through gptqmodel) and TGI load: for a linear `P`
//   P.qweight int32 [in*bits/32, out]      codes packed along the input dimension, low bits first
//   P.qzeros  int32 [groups, out*bits/32]  zero-1 packed along the output dimension ("v1")
//   P.scales  fp16  [groups, out]
//   P.g_idx   int32 [in]                   group of each input column
// and the quantization_config that config.json and quantize_config.json carry.
#pragma once

#include <functional>
#include <map>
#include <string>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include "data/io/gptq_settings.h"
#include "data/io/safetensors.h"

namespace qtrain {

// The integer form of one quantized linear in nn.Linear orientation (what GPTQ and RTN produce).
// All tensors on one device.
struct GptqLinear {
  at::Tensor codes;   // [out, in] uint8, 0..2^bits-1
  at::Tensor scales;  // [groups, out] float32
  at::Tensor zeros;   // [groups, out] int32, the TRUE zero (v1 stores zero-1 on disk)
  at::Tensor g_idx;   // [in] int32, group of each input column
  int bits = 4;

  int64_t out() const { return codes.size(0); }
  int64_t in() const { return codes.size(1); }
  // [out, in] = scales[g_idx[k], n] * (codes[n, k] - zeros[g_idx[k], n]), computed in fp32, then cast.
  at::Tensor dequantize(at::ScalarType dtype) const;
};

// The four tensors of `q` under `prefix` ("model.layers.0.mlp.up_proj"), on the CPU. Throws UsageError
// when the layout cannot hold it: bits not 4/8, out not a multiple of 32/bits (qzeros packs along out),
// in not a multiple of 32/bits (qweight packs along in), or a zero of 0 (v1 stores zero-1; -1 would
// corrupt the word, the known v1 limitation: only asymmetric grids can produce it).
std::map<std::string, at::Tensor> pack_gptq_v1(const std::string& prefix, const GptqLinear& q);

// A tensor by full name, or an undefined tensor when absent.
using TensorGetter = std::function<at::Tensor(const std::string& name)>;

// Reads and validates P.qweight/.qzeros/.scales/.g_idx (dtype, shape, g_idx in [0, groups)) for a
// linear of `out` x `in` quantized with `bits` and `group_size` (the model's quantization_config).
// `source` names where the tensors come from in every InputError. Returns CPU tensors.
GptqLinear unpack_gptq_v1(const TensorGetter& get, const std::string& source, const std::string& prefix, int64_t out,
                          int64_t in, int bits, int64_t group_size);
// The same from a checkpoint; errors name the file that holds the bad tensor.
GptqLinear unpack_gptq_v1(const safetensors::Checkpoint& ckpt, const std::string& prefix, int64_t out, int64_t in,
                          int bits, int64_t group_size);

// True when the checkpoint stores `prefix` as a GPTQ linear (holds `prefix.qweight`).
bool is_gptq_linear(const safetensors::Checkpoint& ckpt, const std::string& prefix);

// config.json `quantization_config` == quantize_config.json contents (formats.md §5.7):
// quant_method "gptq", checkpoint_format "gptq", bits, group_size (as requested, also when it exceeds a
// layer's input: that layer then has one group, ceil(in/g)), damp_percent, desc_act, static_groups, sym,
// true_sequential, pack_dtype "int32", lm_head false, model_name_or_path / model_file_base_name null.
nlohmann::ordered_json gptq_quantization_config(const GptqSettings& s);

}  // namespace qtrain
