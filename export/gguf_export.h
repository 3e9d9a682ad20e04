// The merged model as a llama.cpp GGUF file (`qtrain export --format gguf --gguf-type ...`): what
// llama.cpp's convert_hf_to_gguf.py writes for a Llama checkpoint (metadata, tokenizer keys, tensor names,
// the Q/K row permutation), with the tensor types of
//   f16     convert_hf_to_gguf.py --outtype f16   (LLAMA_FTYPE_MOSTLY_F16 = 1)
//   q8_0    convert_hf_to_gguf.py --outtype q8_0  (LLAMA_FTYPE_MOSTLY_Q8_0 = 7)
//   q4_k_m  llama-quantize Q4_K_M of that file, no importance matrix (LLAMA_FTYPE_MOSTLY_Q4_K_M = 15)
// and each block quantized bit-exactly as those tools do (gguf_quants.h).
//
// Architecture: general.architecture "llama", which llama.cpp also uses for Mistral checkpoints
// (its sliding window is not represented: llama.cpp's llama graph has none). Qwen2/Qwen3 need their own
// GGUF architectures (q/k/v biases, q/k norms) and are refused with a UsageError.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "export/gguf_file.h"
#include "export/gguf_quants.h"
#include "trainer/model/model.h"

namespace qtrain {

enum class GgufType { kF16, kQ8_0, kQ4_K_M };

// "f16" | "q8_0" | "q4_k_m" (case-insensitive) → the type; anything else is a UsageError listing them.
GgufType parse_gguf_type(const std::string& s);
std::string gguf_type_name(GgufType t);  // "f16", "q8_0", "q4_k_m"

struct GgufResult {
  uint64_t bytes = 0;
  // (GGUF tensor name, ggml type name), in file order: "blk.0.attn_v.weight", "Q6_K".
  std::vector<std::pair<std::string, std::string>> tensor_types;
};

// `merged`: the merged dense model (every linear dense, weights in any float dtype, on any device);
// model_dir: the base directory with tokenizer.model or tokenizer.json / vocab.json + merges.txt,
// tokenizer_config.json, config.json. Writes `file` atomically. Throws UsageError for an unsupported
// family or a model that still has 4-bit linears, InputError naming the file for a bad tokenizer.
GgufResult write_gguf(const std::filesystem::path& file, const LlamaModel& merged,
                      const std::filesystem::path& model_dir, GgufType type, const ConsoleOptions& console = {});

namespace gguf {

// One weight as it will be written: GGUF name and ggml shape (ne[0] innermost).
struct TensorShape {
  std::string name;
  std::vector<int64_t> ne;
};

// The ggml type of every tensor, in order, as the tools above choose it (see the .cpp for the rules and
// the llama.cpp version they follow). n_layer and n_head/n_head_kv: the model's (llama.cpp's 70B rule).
std::vector<GgmlType> choose_types(GgufType type, const std::vector<TensorShape>& tensors, int64_t n_layer,
                                   int64_t n_head, int64_t n_head_kv);

// convert_hf_to_gguf.py's LlamaModel.permute: HF's rotate_half row order (per head: all first halves of
// the rotary pairs, then all second halves) → the interleaved pairs llama.cpp's rope expects.
// w [n_head·head_dim, ...] (a weight or a bias); returns the permuted copy. unpermute_qk is its inverse.
at::Tensor permute_qk(const at::Tensor& w, int64_t n_head);
at::Tensor unpermute_qk(const at::Tensor& w, int64_t n_head);

// The tokenizer as GGUF metadata (tokenizer.ggml.* and tokenizer.chat_template), as convert_hf_to_gguf.py
// builds it from the files in model_dir (sentencepiece: _create_vocab_sentencepiece; byte-level BPE:
// get_vocab_base; special ids, add_*_token flags and the chat template: gguf-py's SpecialVocab).
std::vector<KeyValue> tokenizer_metadata(const std::filesystem::path& model_dir, int64_t vocab_size);

}  // namespace gguf
}  // namespace qtrain
