// The GGUF container (version 3, little-endian), as ggml/src/gguf.cpp reads it and gguf-py writes it:
//
//   "GGUF" · u32 version 3 · u64 tensor count · u64 metadata count
//   metadata: string key · u32 value type · value          (string = u64 length + bytes, no terminator;
//                                                           array = u32 element type · u64 count · elements)
//   tensor infos: string name · u32 n_dims · u64 ne[n_dims] · u32 ggml type · u64 offset
//   zero padding to `general.alignment` (32 by default) · tensor data, each tensor starting at an aligned
//   offset from the data start (zero padding between)
//
// ne[] is ggml's order: ne[0] is the innermost (contiguous) dimension, so a PyTorch [out, in] weight has
// ne = {in, out}. The writer streams tensor data (one tensor in memory at a time) to an AtomicFile; the
// reader is a minimal, validating parser for tests and tools.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "data/progress.h"
#include "export/gguf_quants.h"

namespace qtrain::gguf {

enum class ValueType : uint32_t {
  kU8 = 0, kI8 = 1, kU16 = 2, kI16 = 3, kU32 = 4, kI32 = 5, kF32 = 6, kBool = 7,
  kString = 8, kArray = 9, kU64 = 10, kI64 = 11, kF64 = 12,
};

constexpr uint32_t kAlignment = 32;  // GGUF_DEFAULT_ALIGNMENT, also written as general.alignment

// One metadata value. Scalars live in the member of their kind (unsigned integers and bool in u,
// signed in i, floats in f), strings in s, arrays in arr (elements of elem_type).
struct Value {
  ValueType type = ValueType::kU32;
  uint64_t u = 0;
  int64_t i = 0;
  double f = 0;
  std::string s;
  ValueType elem_type = ValueType::kU32;
  std::vector<Value> arr;

  static Value u32(uint32_t v);
  static Value i32(int32_t v);
  static Value f32(float v);
  static Value boolean(bool v);
  static Value string(std::string v);
  static Value strings(std::vector<std::string> v);
  static Value f32s(const std::vector<float>& v);
  static Value i32s(const std::vector<int32_t>& v);
};

struct KeyValue {
  std::string key;
  Value value;
};

// A tensor to write: its data is produced when the writer reaches it, and must be exactly
// nbytes() long (checked).
struct TensorEntry {
  std::string name;
  std::vector<int64_t> ne;  // ggml order, innermost first
  GgmlType type = GgmlType::kF32;
  std::function<std::vector<uint8_t>()> produce;

  uint64_t nbytes() const;  // ne[1..] rows of row_bytes(type, ne[0])
};

class Writer {
 public:
  void add(std::string key, Value value);  // keeps insertion order; a repeated key is a logic_error
  void add_tensor(TensorEntry t);          // same
  const std::vector<KeyValue>& metadata() const { return kv_; }
  const std::vector<TensorEntry>& tensors() const { return tensors_; }
  // Writes the file atomically (temporary sibling, fsync, rename, fsync directory), with a progress line
  // on `console` (tensors are quantized as they are written). Returns its size.
  uint64_t write(const std::filesystem::path& file, const ConsoleOptions& console = {}) const;

 private:
  std::vector<KeyValue> kv_;
  std::vector<TensorEntry> tensors_;
};

struct TensorInfo {
  std::string name;
  std::vector<int64_t> ne;
  GgmlType type = GgmlType::kF32;
  uint64_t offset = 0;  // from data_offset
  uint64_t nbytes = 0;
};

// A parsed GGUF file (all of it in memory: for tests and tools on small models).
struct File {
  uint32_t version = 0;
  std::vector<KeyValue> metadata;
  std::vector<TensorInfo> tensors;
  uint64_t data_offset = 0;  // absolute offset of the tensor data section
  std::vector<uint8_t> bytes;

  const Value* find(const std::string& key) const;  // null when absent
  const Value& at(const std::string& key) const;    // InputError naming the key when absent
  const TensorInfo& tensor(const std::string& name) const;  // InputError naming the tensor when absent
  const uint8_t* data(const TensorInfo& t) const { return bytes.data() + data_offset + t.offset; }
};

// Parses and validates (magic, version 3, lengths within the file, known types, aligned offsets, data
// inside the file). Throws InputError naming the file and what is wrong.
File read_file(const std::filesystem::path& file);

}  // namespace qtrain::gguf
