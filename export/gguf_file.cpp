#include "export/gguf_file.h"

#include <cstring>
#include <fstream>
#include <stdexcept>

#include "data/error.h"
#include "data/io/atomic_file.h"

namespace qtrain::gguf {
namespace {

constexpr char kMagic[4] = {'G', 'G', 'U', 'F'};
constexpr uint32_t kVersion = 3;

uint64_t align_up(uint64_t x) { return (x + kAlignment - 1) / kAlignment * kAlignment; }

// Appends little-endian encodings (every platform we build for is little-endian).
class Out {
 public:
  template <typename T>
  void pod(T v) {
    const auto* p = reinterpret_cast<const uint8_t*>(&v);
    buf.insert(buf.end(), p, p + sizeof(T));
  }
  void str(const std::string& s) {
    pod<uint64_t>(s.size());
    buf.insert(buf.end(), s.begin(), s.end());
  }
  void value(const Value& v) {
    switch (v.type) {
      case ValueType::kU8: pod<uint8_t>(static_cast<uint8_t>(v.u)); break;
      case ValueType::kI8: pod<int8_t>(static_cast<int8_t>(v.i)); break;
      case ValueType::kU16: pod<uint16_t>(static_cast<uint16_t>(v.u)); break;
      case ValueType::kI16: pod<int16_t>(static_cast<int16_t>(v.i)); break;
      case ValueType::kU32: pod<uint32_t>(static_cast<uint32_t>(v.u)); break;
      case ValueType::kI32: pod<int32_t>(static_cast<int32_t>(v.i)); break;
      case ValueType::kF32: pod<float>(static_cast<float>(v.f)); break;
      case ValueType::kBool: pod<uint8_t>(v.u ? 1 : 0); break;
      case ValueType::kString: str(v.s); break;
      case ValueType::kU64: pod<uint64_t>(v.u); break;
      case ValueType::kI64: pod<int64_t>(v.i); break;
      case ValueType::kF64: pod<double>(v.f); break;
      case ValueType::kArray:
        pod<uint32_t>(static_cast<uint32_t>(v.elem_type));
        pod<uint64_t>(v.arr.size());
        for (const Value& e : v.arr) value(e);
        break;
    }
  }
  std::vector<uint8_t> buf;
};

// Bounds-checked reads from the file image; every failure names the file and the offset.
class In {
 public:
  In(const std::vector<uint8_t>& b, std::string file) : b_(b), file_(std::move(file)) {}
  template <typename T>
  T pod(const char* what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, b_.data() + pos, sizeof(T));
    pos += sizeof(T);
    return v;
  }
  std::string str(const char* what) {
    const uint64_t n = pod<uint64_t>(what);
    need(n, what);
    std::string s(reinterpret_cast<const char*>(b_.data() + pos), n);
    pos += n;
    return s;
  }
  Value value(ValueType t, int depth) {
    Value v;
    v.type = t;
    switch (t) {
      case ValueType::kU8: v.u = pod<uint8_t>("u8"); break;
      case ValueType::kI8: v.i = pod<int8_t>("i8"); break;
      case ValueType::kU16: v.u = pod<uint16_t>("u16"); break;
      case ValueType::kI16: v.i = pod<int16_t>("i16"); break;
      case ValueType::kU32: v.u = pod<uint32_t>("u32"); break;
      case ValueType::kI32: v.i = pod<int32_t>("i32"); break;
      case ValueType::kF32: v.f = pod<float>("f32"); break;
      case ValueType::kBool: {
        const uint8_t x = pod<uint8_t>("bool");
        if (x > 1) fail("a bool that is neither 0 nor 1");
        v.u = x;
        break;
      }
      case ValueType::kString: v.s = str("string"); break;
      case ValueType::kU64: v.u = pod<uint64_t>("u64"); break;
      case ValueType::kI64: v.i = pod<int64_t>("i64"); break;
      case ValueType::kF64: v.f = pod<double>("f64"); break;
      case ValueType::kArray: {
        if (depth > 0) fail("a nested array (not supported)");
        v.elem_type = value_type(pod<uint32_t>("array type"));
        const uint64_t n = pod<uint64_t>("array length");
        if (n > b_.size() - pos) fail("an array longer than the file");
        v.arr.reserve(n);
        for (uint64_t k = 0; k < n; ++k) v.arr.push_back(value(v.elem_type, depth + 1));
        break;
      }
    }
    return v;
  }
  ValueType value_type(uint32_t t) {
    if (t > static_cast<uint32_t>(ValueType::kF64)) fail("unknown value type " + std::to_string(t));
    return static_cast<ValueType>(t);
  }
  [[noreturn]] void fail(const std::string& what) const {
    throw InputError(file_ + ": not a valid GGUF file: " + what + " at byte " + std::to_string(pos));
  }
  void need(uint64_t n, const char* what) const {
    if (n > b_.size() - pos) fail(std::string("truncated ") + what);
  }
  uint64_t pos = 0;

 private:
  const std::vector<uint8_t>& b_;
  std::string file_;
};

}  // namespace

Value Value::u32(uint32_t v) { Value x; x.type = ValueType::kU32; x.u = v; return x; }
Value Value::i32(int32_t v) { Value x; x.type = ValueType::kI32; x.i = v; return x; }
Value Value::f32(float v) { Value x; x.type = ValueType::kF32; x.f = v; return x; }
Value Value::boolean(bool v) { Value x; x.type = ValueType::kBool; x.u = v ? 1 : 0; return x; }
Value Value::string(std::string v) { Value x; x.type = ValueType::kString; x.s = std::move(v); return x; }
Value Value::strings(std::vector<std::string> v) {
  Value x;
  x.type = ValueType::kArray;
  x.elem_type = ValueType::kString;
  x.arr.reserve(v.size());
  for (auto& s : v) x.arr.push_back(string(std::move(s)));
  return x;
}
Value Value::f32s(const std::vector<float>& v) {
  Value x;
  x.type = ValueType::kArray;
  x.elem_type = ValueType::kF32;
  x.arr.reserve(v.size());
  for (float f : v) x.arr.push_back(f32(f));
  return x;
}
Value Value::i32s(const std::vector<int32_t>& v) {
  Value x;
  x.type = ValueType::kArray;
  x.elem_type = ValueType::kI32;
  x.arr.reserve(v.size());
  for (int32_t i : v) x.arr.push_back(i32(i));
  return x;
}

uint64_t TensorEntry::nbytes() const {
  if (ne.empty()) throw std::logic_error("GGUF tensor " + name + " has no dimensions");
  uint64_t rows = 1;
  for (std::size_t d = 1; d < ne.size(); ++d) rows *= static_cast<uint64_t>(ne[d]);
  return rows * row_bytes(type, ne[0]);
}

void Writer::add(std::string key, Value value) {
  for (const KeyValue& kv : kv_) {
    if (kv.key == key) throw std::logic_error("GGUF metadata key " + key + " added twice");
  }
  kv_.push_back({std::move(key), std::move(value)});
}

void Writer::add_tensor(TensorEntry t) {
  for (const TensorEntry& e : tensors_) {
    if (e.name == t.name) throw std::logic_error("GGUF tensor " + t.name + " added twice");
  }
  tensors_.push_back(std::move(t));
}

uint64_t Writer::write(const std::filesystem::path& file, const ConsoleOptions& console) const {
  Out h;
  h.buf.insert(h.buf.end(), kMagic, kMagic + 4);
  h.pod<uint32_t>(kVersion);
  h.pod<uint64_t>(tensors_.size());
  h.pod<uint64_t>(kv_.size());
  for (const KeyValue& kv : kv_) {
    h.str(kv.key);
    h.pod<uint32_t>(static_cast<uint32_t>(kv.value.type));
    h.value(kv.value);
  }
  uint64_t offset = 0;
  for (const TensorEntry& t : tensors_) {
    h.str(t.name);
    h.pod<uint32_t>(static_cast<uint32_t>(t.ne.size()));
    for (int64_t d : t.ne) h.pod<uint64_t>(static_cast<uint64_t>(d));
    h.pod<uint32_t>(static_cast<uint32_t>(t.type));
    h.pod<uint64_t>(offset);
    offset = align_up(offset + t.nbytes());
  }
  h.buf.resize(align_up(h.buf.size()), 0);

  AtomicFile out(file);
  out.write(h.buf.data(), h.buf.size());
  uint64_t written = h.buf.size();
  ProgressLine progress(console, "writing " + file.filename().string(), static_cast<int64_t>((written + offset) >> 20), "MiB");
  static const uint8_t zeros[kAlignment] = {};
  for (const TensorEntry& t : tensors_) {
    const std::vector<uint8_t> data = t.produce();
    if (data.size() != t.nbytes()) {
      throw std::logic_error("GGUF tensor " + t.name + ": produced " + std::to_string(data.size()) +
                             " bytes, its shape and type need " + std::to_string(t.nbytes()));
    }
    out.write(data.data(), data.size());
    written += data.size();
    const uint64_t pad = align_up(data.size()) - data.size();
    out.write(zeros, pad);
    written += pad;
    progress.update(static_cast<int64_t>(written >> 20));
  }
  out.commit();
  progress.finish();
  return written;
}

const Value* File::find(const std::string& key) const {
  for (const KeyValue& kv : metadata) {
    if (kv.key == key) return &kv.value;
  }
  return nullptr;
}

const Value& File::at(const std::string& key) const {
  if (const Value* v = find(key)) return *v;
  throw InputError("GGUF metadata has no key " + key);
}

const TensorInfo& File::tensor(const std::string& name) const {
  for (const TensorInfo& t : tensors) {
    if (t.name == name) return t;
  }
  throw InputError("GGUF file has no tensor " + name);
}

File read_file(const std::filesystem::path& file) {
  File f;
  {
    std::ifstream s(file, std::ios::binary);
    if (!s) throw InputError(file.string() + ": cannot open");
    f.bytes.assign(std::istreambuf_iterator<char>(s), std::istreambuf_iterator<char>());
  }
  In in(f.bytes, file.string());
  in.need(4, "magic");
  if (std::memcmp(f.bytes.data(), kMagic, 4) != 0) in.fail("no GGUF magic");
  in.pos = 4;
  f.version = in.pod<uint32_t>("version");
  if (f.version != kVersion) in.fail("version " + std::to_string(f.version) + " (expected 3)");
  const uint64_t n_tensors = in.pod<uint64_t>("tensor count");
  const uint64_t n_kv = in.pod<uint64_t>("metadata count");
  if (n_kv > f.bytes.size() || n_tensors > f.bytes.size()) in.fail("counts larger than the file");
  uint64_t alignment = kAlignment;
  for (uint64_t k = 0; k < n_kv; ++k) {
    KeyValue kv;
    kv.key = in.str("key");
    kv.value = in.value(in.value_type(in.pod<uint32_t>("value type")), 0);
    if (kv.key == "general.alignment") {
      if (kv.value.type != ValueType::kU32 || kv.value.u == 0 || (kv.value.u & (kv.value.u - 1)) != 0) {
        in.fail("general.alignment must be a u32 power of two");
      }
      alignment = kv.value.u;
    }
    f.metadata.push_back(std::move(kv));
  }
  for (uint64_t k = 0; k < n_tensors; ++k) {
    TensorInfo t;
    t.name = in.str("tensor name");
    const uint32_t n_dims = in.pod<uint32_t>("n_dims");
    if (n_dims == 0 || n_dims > 4) in.fail("tensor " + t.name + " with " + std::to_string(n_dims) + " dimensions");
    for (uint32_t d = 0; d < n_dims; ++d) {
      const uint64_t ne = in.pod<uint64_t>("tensor dimension");
      if (ne == 0 || ne > (1ull << 40)) in.fail("tensor " + t.name + " dimension " + std::to_string(ne));
      t.ne.push_back(static_cast<int64_t>(ne));
    }
    const uint32_t type = in.pod<uint32_t>("tensor type");
    t.type = static_cast<GgmlType>(type);
    try {
      block_bytes(t.type);
      t.nbytes = TensorEntry{t.name, t.ne, t.type, {}}.nbytes();
    } catch (const InputError& e) {
      in.fail("tensor " + t.name + ": " + e.what());
    }
    t.offset = in.pod<uint64_t>("tensor offset");
    if (t.offset % alignment != 0) in.fail("tensor " + t.name + " offset not aligned");
    f.tensors.push_back(std::move(t));
  }
  f.data_offset = (in.pos + alignment - 1) / alignment * alignment;
  for (const TensorInfo& t : f.tensors) {
    if (f.data_offset + t.offset + t.nbytes > f.bytes.size()) in.fail("tensor " + t.name + " data past the end");
  }
  return f;
}

}  // namespace qtrain::gguf
