// The safetensors header: parsed and validated completely before any tensor byte is touched.
// Torch-free on purpose so it can be fuzzed and run under AddressSanitizer on its own.
//
// File layout: [u64 little-endian N][N bytes of JSON header][data area]. The header maps each tensor
// name to {"dtype", "shape", "data_offsets": [begin, end]} (offsets relative to the data area), plus
// an optional "__metadata__" object of string → string.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace qtrain::safetensors {

// Every dtype the format defines; unknown strings are rejected at parse time.
enum class Dtype { kBool, kU8, kI8, kI16, kU16, kF16, kBF16, kI32, kU32, kF32, kI64, kU64, kF64, kF8E4M3, kF8E5M2 };

std::size_t dtype_size(Dtype d);
std::string_view dtype_name(Dtype d);  // the format's spelling: "F32", "BF16", ...

struct TensorInfo {
  std::string name;
  Dtype dtype;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte offsets inside the data area, [begin, end)
  uint64_t end = 0;
  uint64_t numel() const;
};

struct Header {
  uint64_t header_bytes = 0;  // N, the JSON length
  uint64_t data_offset = 0;   // 8 + N: where the data area starts in the file
  std::vector<TensorInfo> tensors;  // sorted by begin offset
  std::map<std::string, std::string> metadata;
};

// Largest JSON header accepted (the reference implementation's limit): protects against a length
// field that would make us allocate gigabytes.
inline constexpr uint64_t kMaxHeaderBytes = 100'000'000;

// Validates: the length field fits in the file and the limit, the JSON is well formed and an object,
// no duplicate names, every dtype is known, every shape is non-negative, shape × dtype size equals the
// byte range, ranges lie inside the data area, do not overlap and cover it exactly.
// `file` only names the source in error messages. Throws qtrain::InputError.
Header parse_header(const uint8_t* bytes, uint64_t file_size, const std::string& file);

// Serialises a header for the writer: names sorted, offsets as given, JSON padded with spaces so the
// data area starts on an 8-byte boundary. Returns the 8-byte length prefix followed by the JSON.
std::string serialize_header(const std::vector<TensorInfo>& tensors,
                             const std::map<std::string, std::string>& metadata);

Dtype parse_dtype(std::string_view s, const std::string& where);

}  // namespace qtrain::safetensors
