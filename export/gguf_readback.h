// A GGUF file written by write_gguf (gguf_export.h), read back as the model llama.cpp runs from it: every
// tensor dequantized to float32 from its stored type (the quantization error included), the Q/K rows
// returned from llama.cpp's interleaved order to Hugging Face's, under the Hugging Face names. This is
// what the export report evaluates as "the export as written" for a GGUF export (perplexity, KL vs the
// merged model), through the same LlamaModel as every other row.
#pragma once

#include <filesystem>

#include "trainer/model/model.h"

namespace qtrain {

// `config`: the architecture the file was written from (the merged model's config; checked against the
// file's llama.* hyperparameters). Throws InputError naming the file and the tensor or key that is
// missing or does not match.
LlamaModel load_gguf_model(const std::filesystem::path& file, const ModelConfig& config, const LoadOptions& opts = {});

}  // namespace qtrain
