// Writes a Hugging Face model directory (config.json, safetensors shards, tokenizer files) atomically
// and durably (AtomicDirectory: a temporary sibling, fsynced, renamed to the target at the end).
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

namespace qtrain {

struct ModelDirContents {
  nlohmann::ordered_json config;             // config.json as written
  std::map<std::string, at::Tensor> tensors;  // by Hugging Face name
  std::filesystem::path copy_files_from;      // tokenizer / generation files are copied from here
  uint64_t max_shard_bytes = 5ull << 30;      // transformers' default 5 GB
  std::map<std::string, std::string> extra_files;  // name → contents (quantize_config.json, reports)
  bool overwrite = false;                     // replace a non-empty `out` (the old one is removed only
                                              // once the new one is in place)
};

// Fails (UsageError) if `out` exists and is not empty, unless `overwrite`: nothing is overwritten by
// accident.
void write_model_dir(const std::filesystem::path& out, const ModelDirContents& contents);

// `dir`/config.json with its keys in file order (a rewritten config keeps the original's layout).
// Throws InputError naming the file.
nlohmann::ordered_json read_model_config_json(const std::filesystem::path& dir);

// Records `dtype` in a config.json: `torch_dtype`, and `dtype` where the config has it (transformers 5
// writes and reads `dtype` first, so a stale one would win).
void set_config_dtype(nlohmann::ordered_json& config, const std::string& dtype_name);

// Parses sizes like "5GB", "500MB", "2GiB", "1000" (bytes). Throws UsageError naming `option`.
uint64_t parse_byte_size(const std::string& s, const std::string& option);

}  // namespace qtrain
