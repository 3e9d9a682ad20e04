// The AWQ GEMM packed checkpoint layout (AutoAWQ `version: "gemm"`, WQLinear_GEMM; formats.md §6.5-6.6)
// that vLLM (awq, awq_marlin), transformers (AwqConfig) and SGLang load: for a linear `P` [out, in]
//   P.qweight int32 [in, out/8]       codes packed along the OUTPUT dimension, word c nibble i (bits 4i)
//                                     holding channel 8c + kAwqOrder[i] (the [0,2,4,6,1,3,5,7] interleave)
//   P.qzeros  int32 [groups, out/8]   the TRUE zero (no -1, unlike GPTQ v1), same interleave
//   P.scales  fp16  [groups, out]
// W[n, k] = (q[k, n] - z[k/g, n]) · s[k/g, n]. No g_idx: groups are contiguous runs of input columns.
#pragma once

#include <map>
#include <string>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include "data/io/awq_settings.h"
#include "data/io/gptq_format.h"
#include "data/io/safetensors.h"

namespace qtrain {

// The nibble order inside a word: nibble i holds channel 8c + kAwqOrder[i].
inline constexpr int kAwqOrder[8] = {0, 2, 4, 6, 1, 3, 5, 7};

// The three tensors of `q` (codes/scales/zeros as GptqLinear holds them; g_idx must be k / group width)
// under `prefix`, on the CPU. Throws UsageError when the layout cannot hold it: bits not 4, out not a
// multiple of 8, groups or g_idx not those of `group_size` (contiguous groups), codes or zeros outside
// [0, 15], non-finite scales or scales fp16 cannot hold.
std::map<std::string, at::Tensor> pack_awq_gemm(const std::string& prefix, const GptqLinear& q, int64_t group_size);

// Reads and validates P.qweight/.qzeros/.scales (dtype, shape, finite scales) for a linear of
// `out` x `in` with `bits` and `group_size` (the model's quantization_config); g_idx is made k / width.
// `source` names where the tensors come from in every InputError. Returns CPU tensors.
GptqLinear unpack_awq_gemm(const TensorGetter& get, const std::string& source, const std::string& prefix, int64_t out,
                           int64_t in, int bits, int64_t group_size);
// The same from a checkpoint; errors name the file that holds the bad tensor.
GptqLinear unpack_awq_gemm(const safetensors::Checkpoint& ckpt, const std::string& prefix, int64_t out, int64_t in,
                           int bits, int64_t group_size);

// config.json `quantization_config` (formats.md §6.6; transformers AwqConfig and vLLM's AWQConfig read
// it): quant_method "awq", version "gemm", bits, group_size, zero_point true (the file always carries
// true zeros; see AwqSettings::zero_point), modules_to_not_convert null (lm_head and the embeddings are
// not Linear layers of the decoder; readers convert only the decoder linears named in the file).
nlohmann::ordered_json awq_quantization_config(const AwqSettings& s);

}  // namespace qtrain
