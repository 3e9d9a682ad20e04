#include "data/io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <set>

#include <nlohmann/json.hpp>

#include "data/io/atomic_file.h"
#include "data/error.h"

namespace qtrain::safetensors {
namespace fs = std::filesystem;

at::ScalarType to_scalar_type(Dtype d) {
  switch (d) {
    case Dtype::kBool: return at::kBool;
    case Dtype::kU8: return at::kByte;
    case Dtype::kI8: return at::kChar;
    case Dtype::kI16: return at::kShort;
    case Dtype::kU16: return at::kUInt16;
    case Dtype::kF16: return at::kHalf;
    case Dtype::kBF16: return at::kBFloat16;
    case Dtype::kI32: return at::kInt;
    case Dtype::kU32: return at::kUInt32;
    case Dtype::kF32: return at::kFloat;
    case Dtype::kI64: return at::kLong;
    case Dtype::kU64: return at::kUInt64;
    case Dtype::kF64: return at::kDouble;
    case Dtype::kF8E4M3: return at::kFloat8_e4m3fn;
    case Dtype::kF8E5M2: return at::kFloat8_e5m2;
  }
  throw std::logic_error("safetensors: unhandled dtype");
}

Dtype from_scalar_type(at::ScalarType t) {
  for (Dtype d : {Dtype::kBool, Dtype::kU8, Dtype::kI8, Dtype::kI16, Dtype::kU16, Dtype::kF16, Dtype::kBF16,
                  Dtype::kI32, Dtype::kU32, Dtype::kF32, Dtype::kI64, Dtype::kU64, Dtype::kF64, Dtype::kF8E4M3,
                  Dtype::kF8E5M2})
    if (to_scalar_type(d) == t) return d;
  throw std::invalid_argument(std::string("safetensors: no safetensors dtype for ") + c10::toString(t));
}

// ---- File ------------------------------------------------------------------------------------------

std::shared_ptr<File> File::open(const fs::path& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw InputError(path.string() + ": cannot open safetensors file: " + std::strerror(errno));
  struct stat st{};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    throw InputError(path.string() + ": cannot stat: " + std::strerror(err));
  }
  std::shared_ptr<File> f(new File());
  f->path_ = path;
  f->size_ = static_cast<uint64_t>(st.st_size);
  if (f->size_ > 0) {
    // Copy-on-write: tensors over the mapping may be written by mistake (an in-place op on a weight);
    // that must change only this process's pages, never crash and never touch the file.
    f->map_ = ::mmap(nullptr, f->size_, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    if (f->map_ == MAP_FAILED) {
      const int err = errno;
      f->map_ = nullptr;
      ::close(fd);
      throw InputError(path.string() + ": cannot mmap: " + std::strerror(err));
    }
  }
  ::close(fd);  // the mapping stays valid after close
  static const uint8_t kEmpty[1] = {0};
  f->header_ = parse_header(f->map_ ? static_cast<const uint8_t*>(f->map_) : kEmpty, f->size_, path.string());
  for (std::size_t i = 0; i < f->header_.tensors.size(); ++i) f->index_[f->header_.tensors[i].name] = i;
  f->self_ = f;
  return f;
}

File::~File() {
  if (map_) ::munmap(map_, size_);
}

std::vector<std::string> File::names() const {
  std::vector<std::string> out;
  for (const auto& t : header_.tensors) out.push_back(t.name);
  return out;
}

bool File::contains(const std::string& name) const { return index_.count(name) != 0; }

const TensorInfo& File::info(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end()) throw InputError(path_.string() + ": no tensor named '" + name + "'");
  return header_.tensors[it->second];
}

at::Tensor File::tensor(const std::string& name) const {
  const TensorInfo& t = info(name);
  auto keep_alive = self_.lock();  // the mapping lives as long as any tensor over it
  auto* ptr = static_cast<uint8_t*>(map_) + header_.data_offset + t.begin;
  const auto dtype = to_scalar_type(t.dtype);
  if (t.numel() == 0) return at::empty(t.shape, at::TensorOptions().dtype(dtype));
  // Offsets are only guaranteed aligned to the header's 8 bytes + begin; ATen tolerates unaligned
  // CPU data for element access, but copy when misaligned so vectorised kernels stay safe.
  const bool aligned = reinterpret_cast<uintptr_t>(ptr) % dtype_size(t.dtype) == 0;
  at::Tensor view = at::from_blob(ptr, t.shape, [keep_alive](void*) {}, at::TensorOptions().dtype(dtype));
  return aligned ? view : view.clone();
}

// ---- Checkpoint --------------------------------------------------------------------------------------

Checkpoint Checkpoint::open(const fs::path& dir) {
  Checkpoint c;
  c.dir_ = dir;
  const fs::path single = dir / "model.safetensors";
  const fs::path index = dir / "model.safetensors.index.json";
  if (fs::exists(index)) {
    nlohmann::json j;
    try {
      std::ifstream in(index);
      j = nlohmann::json::parse(in);
    } catch (const nlohmann::json::exception& e) {
      throw InputError(index.string() + ": not valid JSON: " + e.what());
    }
    if (!j.contains("weight_map") || !j["weight_map"].is_object())
      throw InputError(index.string() + ": missing object 'weight_map' (tensor name → shard file)");
    std::map<std::string, std::size_t> shard_ids;
    for (const auto& [name, shard] : j["weight_map"].items()) {
      if (!shard.is_string()) throw InputError(index.string() + ": weight_map['" + name + "'] must be a file name");
      const std::string s = shard.get<std::string>();
      if (s.find('/') != std::string::npos || s == ".." )
        throw InputError(index.string() + ": weight_map['" + name + "'] = '" + s + "' must be a file in the same directory");
      if (!shard_ids.count(s)) {
        const fs::path p = dir / s;
        if (!fs::exists(p))
          throw InputError(index.string() + ": shard '" + s + "' (holding tensor '" + name + "') does not exist in " + dir.string());
        shard_ids[s] = c.files_.size();
        c.files_.push_back(File::open(p));
      }
      const auto& f = c.files_[shard_ids[s]];
      if (!f->contains(name))
        throw InputError(index.string() + ": tensor '" + name + "' is mapped to '" + s + "' but that shard does not contain it");
      c.where_[name] = shard_ids[s];
    }
  } else if (fs::exists(single)) {
    c.files_.push_back(File::open(single));
    for (const auto& n : c.files_[0]->names()) c.where_[n] = 0;
  } else {
    throw InputError(dir.string() + ": no model.safetensors or model.safetensors.index.json (is this a Hugging Face model directory?)");
  }
  return c;
}

std::vector<std::string> Checkpoint::names() const {
  std::vector<std::string> out;
  for (const auto& [n, _] : where_) out.push_back(n);
  return out;
}

const TensorInfo& Checkpoint::info(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) throw InputError(dir_.string() + ": checkpoint has no tensor '" + name + "'");
  return files_[it->second]->info(name);
}

at::Tensor Checkpoint::tensor(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) throw InputError(dir_.string() + ": checkpoint has no tensor '" + name + "'");
  return files_[it->second]->tensor(name);
}

const fs::path& Checkpoint::file_of(const std::string& name) const {
  auto it = where_.find(name);
  return it == where_.end() ? dir_ : files_[it->second]->path();
}

std::vector<fs::path> Checkpoint::files() const {
  std::vector<fs::path> out;
  for (const auto& f : files_) out.push_back(f->path());
  return out;
}

// ---- Writer ----------------------------------------------------------------------------------------------

namespace {

uint64_t byte_size(const at::Tensor& t) { return static_cast<uint64_t>(t.numel()) * t.element_size(); }

void write_file(const fs::path& path, const std::map<std::string, at::Tensor>& tensors,
                const std::map<std::string, std::string>& metadata) {
  std::vector<TensorInfo> infos;
  std::vector<at::Tensor> data;
  uint64_t offset = 0;
  // Data in name order, matching the sorted header (what the reference writer does).
  for (const auto& [name, t] : tensors) {
    at::Tensor c = t.detach().to(at::kCPU).contiguous();
    TensorInfo info;
    info.name = name;
    try {
      info.dtype = from_scalar_type(c.scalar_type());
    } catch (const std::invalid_argument& e) {
      throw std::invalid_argument(path.string() + ": tensor '" + name + "': " + e.what());
    }
    info.shape = c.sizes().vec();
    info.begin = offset;
    offset += byte_size(c);
    info.end = offset;
    infos.push_back(info);
    data.push_back(c);
  }
  AtomicFile out(path);
  const std::string header = serialize_header(infos, metadata);
  out.write(header.data(), header.size());
  for (const auto& c : data) out.write(c.data_ptr(), byte_size(c));
  out.commit();
}

}  // namespace

void save(const fs::path& path, const std::map<std::string, at::Tensor>& tensors,
          const std::map<std::string, std::string>& metadata) {
  write_file(path, tensors, metadata);
}

void save_sharded(const fs::path& dir, const std::map<std::string, at::Tensor>& tensors, uint64_t max_shard_bytes,
                  const std::string& stem) {
  fs::create_directories(dir);
  // Greedy in name order, like transformers: start a new shard when the next tensor would overflow.
  std::vector<std::map<std::string, at::Tensor>> shards(1);
  uint64_t current = 0, total = 0;
  for (const auto& [name, t] : tensors) {
    const uint64_t b = byte_size(t);
    if (current > 0 && current + b > max_shard_bytes) {
      shards.emplace_back();
      current = 0;
    }
    shards.back()[name] = t;
    current += b;
    total += b;
  }
  const std::map<std::string, std::string> meta = {{"format", "pt"}};
  if (shards.size() == 1) {
    write_file(dir / (stem + ".safetensors"), shards[0], meta);
    return;
  }
  nlohmann::json index;
  index["metadata"] = {{"total_size", total}};
  index["weight_map"] = nlohmann::json::object();
  const int n = static_cast<int>(shards.size());
  for (int i = 0; i < n; ++i) {
    char name[64];
    std::snprintf(name, sizeof name, "-%05d-of-%05d.safetensors", i + 1, n);
    const std::string file = stem + name;
    write_file(dir / file, shards[i], meta);
    for (const auto& [tname, _] : shards[i]) index["weight_map"][tname] = file;
  }
  write_file_atomic(dir / (stem + ".safetensors.index.json"), index.dump(2) + "\n");
}

}  // namespace qtrain::safetensors
