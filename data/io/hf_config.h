// A Hugging Face config.json for the Llama family, parsed once into a typed struct.
// Supported: llama (1/2/3, rope scaling none / llama3 / linear), mistral (sliding window), qwen2
// (q/k/v bias), qwen3 (per-head q/k RMSNorm). Both the transformers 4.x spelling (rope_theta +
// rope_scaling) and the 5.x spelling (rope_parameters) are read. Anything else is an InputError naming
// the file, the key and the value.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "data/io/awq_settings.h"
#include "data/io/gptq_settings.h"

namespace qtrain {

enum class ModelFamily { kLlama, kMistral, kQwen2, kQwen3 };
std::string_view family_name(ModelFamily f);  // the config.json model_type

enum class RopeType { kDefault, kLinear, kLlama3 };
std::string_view rope_type_name(RopeType r);

struct RopeConfig {
  RopeType type = RopeType::kDefault;
  double theta = 10000.0;
  double factor = 1.0;  // linear and llama3
  // llama3 only
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 8192;
};

// config.json `quantization_config` of a checkpoint saved by bitsandbytes in 4 bits (formats.md §1.9).
// The per-tensor details (blocksize, nesting, offsets) live next to each weight, not here.
struct Bnb4bitConfig {
  std::string quant_type = "nf4";  // nf4 | fp4
  bool double_quant = true;
  std::string compute_dtype = "bfloat16";
};

struct ModelConfig {
  ModelFamily family = ModelFamily::kLlama;
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;  // defaults to num_attention_heads (MHA)
  int64_t head_dim = 0;             // defaults to hidden_size / num_attention_heads
  int64_t max_position_embeddings = 2048;
  double rms_norm_eps = 1e-6;
  RopeConfig rope;
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // bias on q, k, v, o (Llama's flag)
  bool qkv_bias = false;        // bias on q, k, v only (Qwen2)
  bool mlp_bias = false;
  bool qk_norm = false;         // per-head RMSNorm on q and k before RoPE (Qwen3)
  std::optional<int64_t> sliding_window;  // Mistral: keys within the last `window` positions
  std::optional<int64_t> bos_token_id;
  std::vector<int64_t> eos_token_ids;
  std::optional<int64_t> pad_token_id;
  std::string torch_dtype = "float32";  // the checkpoint's declared dtype
  std::optional<Bnb4bitConfig> bnb_4bit;  // set when the checkpoint is already bnb-4bit
  // Set when the checkpoint is GPTQ v1 (quant_method gptq, checkpoint_format gptq): its decoder-layer
  // linears are stored packed (gptq_format.h) and load dequantized (or re-quantized to NF4).
  std::optional<GptqSettings> gptq;
  // Set when the checkpoint is AWQ GEMM (quant_method awq, version gemm): its decoder-layer linears are
  // stored packed (awq_format.h) and load dequantized (or re-quantized to NF4). Only the storage fields
  // (bits, group_size, zero_point) are read; the search settings keep their defaults.
  std::optional<AwqSettings> awq;

  int64_t q_dim() const { return num_attention_heads * head_dim; }
  int64_t kv_dim() const { return num_key_value_heads * head_dim; }
};

// Parses `path` (a config.json). Throws InputError naming the file and key.
ModelConfig parse_model_config(const std::filesystem::path& path);
ModelConfig parse_model_config_text(const std::string& json_text, const std::string& source);

}  // namespace qtrain
