// The quick start's base model, made from nothing but the repository: a sentencepiece tokenizer
// trained on the recipe's own data files and a small Llama with random weights, written as a normal
// Hugging Face model directory (so every later step, and transformers, treat it like any other).
#pragma once

#include <cstdint>
#include <filesystem>

#include "data/dataset/data_config.h"

namespace qtrain {

struct QuickstartModelShape {
  int64_t vocab_size = 512;
  int64_t hidden_size = 128;
  int64_t intermediate_size = 352;
  int64_t num_layers = 4;
  int64_t num_heads = 4;
  int64_t num_kv_heads = 2;
};

// Writes config.json, model.safetensors (LlamaModel::random's weights for `seed`), tokenizer.model and
// tokenizer_config.json into `dir`, atomically (data/io/atomic_file.h: AtomicDirectory).
void create_quickstart_model(const std::filesystem::path& dir, const DataConfig& data, uint64_t seed,
                             const QuickstartModelShape& shape = {});

}  // namespace qtrain
