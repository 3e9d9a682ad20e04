#include "data/io/safetensors_header.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <set>

#include <nlohmann/json.hpp>

#include "data/error.h"

namespace qtrain::safetensors {
namespace {

struct DtypeEntry {
  Dtype dtype;
  std::string_view name;
  std::size_t size;
};

// The one enum ↔ string table for safetensors dtypes.
constexpr DtypeEntry kDtypes[] = {
    {Dtype::kBool, "BOOL", 1}, {Dtype::kU8, "U8", 1},     {Dtype::kI8, "I8", 1},
    {Dtype::kI16, "I16", 2},   {Dtype::kU16, "U16", 2},   {Dtype::kF16, "F16", 2},
    {Dtype::kBF16, "BF16", 2}, {Dtype::kI32, "I32", 4},   {Dtype::kU32, "U32", 4},
    {Dtype::kF32, "F32", 4},   {Dtype::kI64, "I64", 8},   {Dtype::kU64, "U64", 8},
    {Dtype::kF64, "F64", 8},   {Dtype::kF8E4M3, "F8_E4M3", 1}, {Dtype::kF8E5M2, "F8_E5M2", 1},
};

const DtypeEntry& entry(Dtype d) {
  for (const auto& e : kDtypes)
    if (e.dtype == d) return e;
  throw std::logic_error("safetensors: dtype missing from the table");
}

[[noreturn]] void fail(const std::string& file, const std::string& msg) {
  throw InputError(file + ": invalid safetensors file: " + msg);
}

// a*b with overflow detection; false if it overflows.
bool mul_ok(uint64_t a, uint64_t b, uint64_t* out) {
  if (a != 0 && b > std::numeric_limits<uint64_t>::max() / a) return false;
  *out = a * b;
  return true;
}

TensorInfo parse_tensor(const std::string& name, const nlohmann::json& v, const std::string& file) {
  const std::string where = "tensor '" + name + "'";
  if (!v.is_object()) fail(file, where + ": expected an object {dtype, shape, data_offsets}");
  for (const auto& [k, _] : v.items())
    if (k != "dtype" && k != "shape" && k != "data_offsets")
      fail(file, where + ": unknown field '" + k + "' (expected dtype, shape, data_offsets)");
  if (!v.contains("dtype") || !v["dtype"].is_string()) fail(file, where + ": 'dtype' missing or not a string");
  if (!v.contains("shape") || !v["shape"].is_array()) fail(file, where + ": 'shape' missing or not an array");
  if (!v.contains("data_offsets") || !v["data_offsets"].is_array() || v["data_offsets"].size() != 2)
    fail(file, where + ": 'data_offsets' must be an array [begin, end]");

  TensorInfo t;
  t.name = name;
  t.dtype = parse_dtype(v["dtype"].get<std::string>(), file + ": " + where);
  for (const auto& d : v["shape"]) {
    if (!d.is_number_unsigned()) fail(file, where + ": shape entries must be non-negative integers, got " + d.dump());
    const uint64_t dim = d.get<uint64_t>();
    if (dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) fail(file, where + ": shape entry too large");
    t.shape.push_back(static_cast<int64_t>(dim));
  }
  for (const auto& o : v["data_offsets"])
    if (!o.is_number_unsigned()) fail(file, where + ": data_offsets must be non-negative integers, got " + o.dump());
  t.begin = v["data_offsets"][0].get<uint64_t>();
  t.end = v["data_offsets"][1].get<uint64_t>();
  if (t.end < t.begin)
    fail(file, where + ": data_offsets end " + std::to_string(t.end) + " < begin " + std::to_string(t.begin));

  uint64_t n = 1;
  for (int64_t d : t.shape)
    if (!mul_ok(n, static_cast<uint64_t>(d), &n)) fail(file, where + ": shape overflows");
  uint64_t bytes = 0;
  if (!mul_ok(n, dtype_size(t.dtype), &bytes)) fail(file, where + ": byte size overflows");
  if (bytes != t.end - t.begin)
    fail(file, where + ": shape × dtype size is " + std::to_string(bytes) + " bytes but data_offsets span " +
                   std::to_string(t.end - t.begin));
  return t;
}

}  // namespace

std::size_t dtype_size(Dtype d) { return entry(d).size; }
std::string_view dtype_name(Dtype d) { return entry(d).name; }

uint64_t TensorInfo::numel() const {
  uint64_t n = 1;
  for (int64_t d : shape) n *= static_cast<uint64_t>(d);
  return n;
}

Dtype parse_dtype(std::string_view s, const std::string& where) {
  for (const auto& e : kDtypes)
    if (e.name == s) return e.dtype;
  std::string known;
  for (const auto& e : kDtypes) known += (known.empty() ? "" : ", ") + std::string(e.name);
  throw InputError(where + ": unknown safetensors dtype '" + std::string(s) + "' (known: " + known + ")");
}

Header parse_header(const uint8_t* bytes, uint64_t file_size, const std::string& file) {
  if (file_size < 8) fail(file, "file is " + std::to_string(file_size) + " bytes, shorter than the 8-byte header length");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | bytes[i];  // little-endian regardless of host
  if (n > kMaxHeaderBytes) fail(file, "header length " + std::to_string(n) + " exceeds the limit of " + std::to_string(kMaxHeaderBytes));
  if (n > file_size - 8)
    fail(file, "header length " + std::to_string(n) + " runs past the end of the file (" + std::to_string(file_size) + " bytes)");

  Header h;
  h.header_bytes = n;
  h.data_offset = 8 + n;
  const char* json_begin = reinterpret_cast<const char*>(bytes + 8);

  // nlohmann keeps the last of duplicate keys silently; catch them while parsing instead.
  std::set<std::string> seen;
  std::string duplicate;
  auto on_event = [&](int depth, nlohmann::json::parse_event_t ev, nlohmann::json& parsed) {
    if (depth == 1 && ev == nlohmann::json::parse_event_t::key) {
      const auto key = parsed.get<std::string>();
      if (!seen.insert(key).second && duplicate.empty()) duplicate = key;
    }
    return true;
  };
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(json_begin, json_begin + n, on_event);
  } catch (const nlohmann::json::parse_error& e) {
    fail(file, std::string("header is not valid JSON: ") + e.what());
  }
  if (!duplicate.empty()) fail(file, "tensor name '" + duplicate + "' appears twice in the header");
  if (!j.is_object()) fail(file, "header must be a JSON object");

  for (const auto& [name, v] : j.items()) {
    if (name == "__metadata__") {
      if (!v.is_object()) fail(file, "__metadata__ must be an object of strings");
      for (const auto& [k, mv] : v.items()) {
        if (!mv.is_string()) fail(file, "__metadata__['" + k + "'] must be a string");
        h.metadata[k] = mv.get<std::string>();
      }
      continue;
    }
    h.tensors.push_back(parse_tensor(name, v, file));
  }

  // Ranges: sorted, contiguous, non-overlapping and covering the data area exactly.
  std::sort(h.tensors.begin(), h.tensors.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  const uint64_t data_size = file_size - h.data_offset;
  uint64_t cursor = 0;
  const TensorInfo* prev = nullptr;
  for (const auto& t : h.tensors) {
    if (t.end > data_size)
      fail(file, "tensor '" + t.name + "' data_offsets [" + std::to_string(t.begin) + ", " + std::to_string(t.end) +
                     ") lie outside the data area of " + std::to_string(data_size) + " bytes (file truncated?)");
    if (t.begin < cursor)
      fail(file, "tensor '" + t.name + "' overlaps tensor '" + (prev ? prev->name : std::string("?")) + "'");
    if (t.begin > cursor)
      fail(file, "gap of " + std::to_string(t.begin - cursor) + " bytes before tensor '" + t.name + "' in the data area");
    cursor = t.end;
    prev = &t;
  }
  if (cursor != data_size)
    fail(file, "data area has " + std::to_string(data_size) + " bytes but the tensors cover " + std::to_string(cursor));
  return h;
}

std::string serialize_header(const std::vector<TensorInfo>& tensors, const std::map<std::string, std::string>& metadata) {
  // nlohmann's default object is a std::map, so names come out sorted as the format recommends.
  nlohmann::json j = nlohmann::json::object();
  if (!metadata.empty()) j["__metadata__"] = metadata;
  for (const auto& t : tensors) {
    if (j.contains(t.name)) throw std::invalid_argument("safetensors writer: duplicate tensor name '" + t.name + "'");
    j[t.name] = {{"dtype", std::string(dtype_name(t.dtype))}, {"shape", t.shape}, {"data_offsets", {t.begin, t.end}}};
  }
  std::string s = j.dump();
  s.append((8 - (8 + s.size()) % 8) % 8, ' ');  // data area starts 8-byte aligned
  std::string out(8, '\0');
  uint64_t n = s.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + s;
}

}  // namespace qtrain::safetensors
