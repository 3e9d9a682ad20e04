// safetensors files as libtorch tensors: a zero-copy mmap reader (header fully validated first, see
// safetensors_header.h), a checkpoint view over one file or a sharded set (model.safetensors.index.json),
// and an atomic writer with optional sharding that transformers and the `safetensors` package read back.
#pragma once

#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "data/io/safetensors_header.h"

namespace qtrain::safetensors {

at::ScalarType to_scalar_type(Dtype d);
Dtype from_scalar_type(at::ScalarType t);  // throws std::invalid_argument for types the format lacks

// One mmapped file. Tensors returned by tensor() alias the mapping (read-only, CPU) and keep it alive.
class File {
 public:
  static std::shared_ptr<File> open(const std::filesystem::path& path);  // throws InputError
  ~File();
  File(const File&) = delete;
  File& operator=(const File&) = delete;

  const std::filesystem::path& path() const { return path_; }
  const Header& header() const { return header_; }
  std::vector<std::string> names() const;  // in file order
  bool contains(const std::string& name) const;
  const TensorInfo& info(const std::string& name) const;  // throws InputError naming file + tensor
  // Zero-copy CPU tensor over the (copy-on-write) mapping: writes stay private to this process.
  at::Tensor tensor(const std::string& name) const;

 private:
  File() = default;
  std::filesystem::path path_;
  void* map_ = nullptr;
  uint64_t size_ = 0;
  Header header_;
  std::map<std::string, std::size_t> index_;  // name → position in header_.tensors
  std::weak_ptr<File> self_;
};

// A checkpoint directory: model.safetensors, or model.safetensors.index.json naming the shards.
class Checkpoint {
 public:
  static Checkpoint open(const std::filesystem::path& dir);  // throws InputError
  std::vector<std::string> names() const;                    // sorted
  bool contains(const std::string& name) const { return where_.count(name) != 0; }
  const TensorInfo& info(const std::string& name) const;
  at::Tensor tensor(const std::string& name) const;          // zero-copy, CPU
  std::vector<std::filesystem::path> files() const;
  // The shard that holds `name` (for error messages), or the directory when none does.
  const std::filesystem::path& file_of(const std::string& name) const;
  const std::filesystem::path& dir() const { return dir_; }

 private:
  std::filesystem::path dir_;
  std::vector<std::shared_ptr<File>> files_;
  std::map<std::string, std::size_t> where_;  // tensor name → files_ index
};

// Writes tensors (any device/dtype the format has; made contiguous CPU on the way) to `path`
// atomically: a temporary name in the same directory, fsync, rename.
void save(const std::filesystem::path& path, const std::map<std::string, at::Tensor>& tensors,
          const std::map<std::string, std::string>& metadata = {{"format", "pt"}});

// Writes a checkpoint into `dir`: one `model.safetensors` when everything fits in max_shard_bytes,
// else `model-0000i-of-0000n.safetensors` shards plus `model.safetensors.index.json` (metadata.total_size,
// weight_map) as transformers writes them. `stem` replaces "model" (e.g. "adapter_model").
void save_sharded(const std::filesystem::path& dir, const std::map<std::string, at::Tensor>& tensors,
                  uint64_t max_shard_bytes, const std::string& stem = "model");

}  // namespace qtrain::safetensors
