#include "data/io/model_writer.h"

#include <fstream>

#include "data/io/atomic_file.h"
#include "data/error.h"
#include "data/io/safetensors.h"

namespace qtrain {
namespace fs = std::filesystem;

namespace {
// Files a model directory carries besides config and weights (tokenizers, generation defaults).
constexpr const char* kSideFiles[] = {"tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                                      "added_tokens.json", "vocab.json", "merges.txt", "generation_config.json",
                                      "chat_template.jinja"};
}  // namespace

void write_model_dir(const fs::path& out, const ModelDirContents& c) {
  if (fs::exists(out) && !fs::is_directory(out)) throw UsageError(out.string() + " exists and is not a directory");
  if (fs::exists(out) && !fs::is_empty(out) && !c.overwrite)
    throw UsageError(out.string() + " already exists and is not empty; choose another --out, remove it, or pass --overwrite");
  AtomicDirectory dir(out);  // replaces `out` (empty, or any with overwrite) only once complete
  safetensors::save_sharded(dir.path(), c.tensors, c.max_shard_bytes);
  write_file_atomic(dir.path() / "config.json", c.config.dump(2) + "\n");
  if (!c.copy_files_from.empty())
    for (const char* f : kSideFiles)
      if (fs::exists(c.copy_files_from / f)) fs::copy_file(c.copy_files_from / f, dir.path() / f);
  for (const auto& [name, text] : c.extra_files) write_file_atomic(dir.path() / name, text);
  dir.commit();
}

nlohmann::ordered_json read_model_config_json(const fs::path& dir) {
  const fs::path file = dir / "config.json";
  std::ifstream in(file);
  if (!in) throw InputError(file.string() + ": cannot open");
  try {
    return nlohmann::ordered_json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw InputError(file.string() + ": not valid JSON: " + e.what());
  }
}

void set_config_dtype(nlohmann::ordered_json& config, const std::string& dtype_name) {
  config["torch_dtype"] = dtype_name;
  if (config.contains("dtype")) config["dtype"] = dtype_name;
}

uint64_t parse_byte_size(const std::string& s, const std::string& option) {
  std::size_t used = 0;
  double v = 0;
  try {
    v = std::stod(s, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  const std::string unit = s.substr(used);
  const std::map<std::string, double> units = {{"", 1},         {"B", 1},          {"KB", 1e3},        {"MB", 1e6},
                                               {"GB", 1e9},     {"KiB", 1024.0},   {"MiB", 1048576.0}, {"GiB", 1073741824.0}};
  auto it = units.find(unit);
  if (used == 0 || it == units.end() || v <= 0)
    throw UsageError("--" + option + " '" + s + "' is not a size (expected e.g. 5GB, 500MB, 2GiB)");
  return static_cast<uint64_t>(v * it->second);
}

}  // namespace qtrain
