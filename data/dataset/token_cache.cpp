#include "data/dataset/token_cache.h"

#include <hdf5.h>
#include <unistd.h>

#include <cstring>
#include <fcntl.h>
#include <random>
#include <stdexcept>

namespace qtrain {
namespace {

constexpr int kFormatVersion = 1;

// RAII for an HDF5 id and its matching close function.
class H5Handle {
 public:
  H5Handle(hid_t id, herr_t (*close)(hid_t)) : id_(id), close_(close) {}
  ~H5Handle() {
    if (id_ >= 0) close_(id_);
  }
  H5Handle(const H5Handle&) = delete;
  H5Handle& operator=(const H5Handle&) = delete;
  hid_t get() const { return id_; }
  bool ok() const { return id_ >= 0; }

 private:
  hid_t id_;
  herr_t (*close_)(hid_t);
};

// The counts, in a fixed order, as one int64 attribute.
constexpr int kNumCounts = 9;
void counts_to_array(const FileCounts& c, int64_t* a) {
  const int64_t v[kNumCounts] = {c.records,   c.skipped,           c.examples, c.dropped_no_labels, c.truncated,
                                 c.truncated_lost_eos, c.without_trained_eos, c.tokens,   c.label_tokens};
  std::memcpy(a, v, sizeof(v));
}
void counts_from_array(const int64_t* a, FileCounts& c) {
  int64_t* f[kNumCounts] = {&c.records,   &c.skipped,           &c.examples, &c.dropped_no_labels, &c.truncated,
                            &c.truncated_lost_eos, &c.without_trained_eos, &c.tokens,   &c.label_tokens};
  for (int i = 0; i < kNumCounts; ++i) *f[i] = a[i];
}

void write_string_attr(hid_t obj, const char* name, const std::string& value) {
  H5Handle type(H5Tcopy(H5T_C_S1), H5Tclose);
  H5Tset_size(type.get(), std::max<size_t>(value.size(), 1));
  H5Handle space(H5Screate(H5S_SCALAR), H5Sclose);
  H5Handle attr(H5Acreate2(obj, name, type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  if (!attr.ok() || H5Awrite(attr.get(), type.get(), value.empty() ? "" : value.data()) < 0)
    throw std::runtime_error(std::string("cannot write attribute ") + name);
}

std::optional<std::string> read_string_attr(hid_t obj, const char* name) {
  if (H5Aexists(obj, name) <= 0) return std::nullopt;
  H5Handle attr(H5Aopen(obj, name, H5P_DEFAULT), H5Aclose);
  H5Handle type(H5Aget_type(attr.get()), H5Tclose);
  if (!attr.ok() || H5Tget_class(type.get()) != H5T_STRING || H5Tis_variable_str(type.get()) > 0) return std::nullopt;
  std::string s(H5Tget_size(type.get()), '\0');
  H5Handle mem(H5Tcopy(H5T_C_S1), H5Tclose);
  H5Tset_size(mem.get(), s.size());
  if (H5Aread(attr.get(), mem.get(), s.data()) < 0) return std::nullopt;
  while (!s.empty() && s.back() == '\0') s.pop_back();
  return s;
}

template <class T>
void write_dataset(hid_t file, const char* name, hid_t type, const std::vector<T>& v) {
  const hsize_t n = v.size();
  H5Handle space(H5Screate_simple(1, &n, nullptr), H5Sclose);
  H5Handle ds(H5Dcreate2(file, name, type, space.get(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), H5Dclose);
  const T dummy{};
  if (!ds.ok() || H5Dwrite(ds.get(), type, H5S_ALL, H5S_ALL, H5P_DEFAULT, v.empty() ? &dummy : v.data()) < 0)
    throw std::runtime_error(std::string("cannot write dataset ") + name);
}

template <class T>
bool read_dataset(hid_t file, const char* name, hid_t type, std::vector<T>* v, std::string* why) {
  if (H5Lexists(file, name, H5P_DEFAULT) <= 0) return *why = std::string("dataset ") + name + " is missing", false;
  H5Handle ds(H5Dopen2(file, name, H5P_DEFAULT), H5Dclose);
  H5Handle space(H5Dget_space(ds.get()), H5Sclose);
  if (!ds.ok() || H5Sget_simple_extent_ndims(space.get()) != 1) return *why = std::string("dataset ") + name + " is not 1-D", false;
  hsize_t n = 0;
  H5Sget_simple_extent_dims(space.get(), &n, nullptr);
  v->resize(n);
  T dummy{};
  if (H5Dread(ds.get(), type, H5S_ALL, H5S_ALL, H5P_DEFAULT, n ? v->data() : &dummy) < 0)
    return *why = std::string("dataset ") + name + " cannot be read", false;
  return true;
}

}  // namespace

std::string content_hash(std::string_view bytes) {
  // Two multiply-rotate lanes over 8-byte words, then a final avalanche (splitmix64's finaliser).
  uint64_t a = 0x9E3779B97F4A7C15ull ^ bytes.size(), b = 0xC2B2AE3D27D4EB4Full;
  auto mix = [](uint64_t h, uint64_t w, uint64_t k) {
    h ^= w * k;
    h = (h << 31) | (h >> 33);
    return h * 0x9E3779B97F4A7C15ull + 0x165667B19E3779F9ull;
  };
  size_t i = 0;
  for (; i + 16 <= bytes.size(); i += 16) {
    uint64_t w0, w1;
    std::memcpy(&w0, bytes.data() + i, 8);
    std::memcpy(&w1, bytes.data() + i + 8, 8);
    a = mix(a, w0, 0x87C37B91114253D5ull);
    b = mix(b, w1, 0x4CF5AD432745937Full);
  }
  uint64_t tail[2] = {0, 0};
  std::memcpy(tail, bytes.data() + i, bytes.size() - i);
  a = mix(a, tail[0], 0x87C37B91114253D5ull);
  b = mix(b, tail[1], 0x4CF5AD432745937Full);
  uint64_t h = a ^ (b * 0xFF51AFD7ED558CCDull);
  h ^= h >> 30, h *= 0xBF58476D1CE4E5B9ull, h ^= h >> 27, h *= 0x94D049BB133111EBull, h ^= h >> 31;
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

std::optional<CachedTokens> read_token_cache(const std::filesystem::path& path, const std::string& key, std::string* why) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return *why = "no cache file", std::nullopt;
  std::optional<CachedTokens> result;
  // HDF5 prints its error stack by default; a corrupt cache is an expected case we report ourselves.
  H5E_BEGIN_TRY {
    [&] {
      H5Handle file(H5Fopen(path.string().c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose);
      if (!file.ok()) return void(*why = "not a readable HDF5 file (partial or corrupt)");
      const auto version = read_string_attr(file.get(), "qtrain_token_cache_version");
      if (!version || *version != std::to_string(kFormatVersion)) return void(*why = "written by another cache version");
      const auto stored_key = read_string_attr(file.get(), "key");
      if (!stored_key || *stored_key != key) return void(*why = "stale (made from other inputs or settings)");
      CachedTokens c;
      if (!read_dataset(file.get(), "tokens", H5T_NATIVE_INT32, &c.examples.tokens, why) ||
          !read_dataset(file.get(), "trained", H5T_NATIVE_UINT8, &c.examples.trained, why) ||
          !read_dataset(file.get(), "offsets", H5T_NATIVE_INT64, &c.examples.offsets, why))
        return;
      std::vector<int64_t> counts, pad;
      if (!read_dataset(file.get(), "counts", H5T_NATIVE_INT64, &counts, why) || counts.size() != kNumCounts ||
          !read_dataset(file.get(), "pad_id", H5T_NATIVE_INT64, &pad, why) || pad.size() != 1)
        return void(*why = "counts or pad_id missing or malformed");
      counts_from_array(counts.data(), c.counts);
      c.examples.pad_id = static_cast<int32_t>(pad[0]);
      const auto& off = c.examples.offsets;
      bool consistent = !off.empty() && off.front() == 0 && off.back() == static_cast<int64_t>(c.examples.tokens.size()) &&
                        c.examples.trained.size() == c.examples.tokens.size() && c.counts.examples == c.examples.size();
      for (size_t i = 1; consistent && i < off.size(); ++i) consistent = off[i] > off[i - 1];
      if (!consistent) return void(*why = "inconsistent offsets / sizes (corrupt)");
      if (auto msgs = read_string_attr(file.get(), "skipped_messages"); msgs && !msgs->empty()) {
        size_t p = 0;
        while (p <= msgs->size()) {
          const size_t e = std::min(msgs->find('\n', p), msgs->size());
          c.counts.skipped_messages.push_back(msgs->substr(p, e - p));
          p = e + 1;
        }
      }
      result = std::move(c);
    }();
  }
  H5E_END_TRY;
  return result;
}

void write_token_cache(const std::filesystem::path& path, const std::string& key, const CachedTokens& c) {
  std::filesystem::create_directories(path.parent_path());
  // The same pattern as AtomicFile: a unique temporary in the target's directory, renamed when whole.
  std::random_device rd;
  const auto temp = path.parent_path() / (path.filename().string() + ".tmp-" + std::to_string(::getpid()) + "-" + std::to_string(rd()));
  struct Remove {
    std::filesystem::path p;
    bool armed = true;
    ~Remove() {
      std::error_code ec;
      if (armed) std::filesystem::remove(p, ec);
    }
  } cleanup{temp};
  // Exceptions must not cross H5E_BEGIN_TRY/END_TRY (the macros restore HDF5's error printing), so
  // the writer catches inside and rethrows after.
  std::string error;
  H5E_BEGIN_TRY {
    try {
      H5Handle file(H5Fcreate(temp.string().c_str(), H5F_ACC_EXCL, H5P_DEFAULT, H5P_DEFAULT), H5Fclose);
      if (!file.ok()) throw std::runtime_error("cannot create the file");
      write_string_attr(file.get(), "qtrain_token_cache_version", std::to_string(kFormatVersion));
      write_string_attr(file.get(), "key", key);
      std::string msgs;
      for (const auto& m : c.counts.skipped_messages) msgs += (msgs.empty() ? "" : "\n") + m;
      write_string_attr(file.get(), "skipped_messages", msgs);
      write_dataset(file.get(), "tokens", H5T_NATIVE_INT32, c.examples.tokens);
      write_dataset(file.get(), "trained", H5T_NATIVE_UINT8, c.examples.trained);
      write_dataset(file.get(), "offsets", H5T_NATIVE_INT64, c.examples.offsets);
      std::vector<int64_t> counts(kNumCounts);
      counts_to_array(c.counts, counts.data());
      write_dataset(file.get(), "counts", H5T_NATIVE_INT64, counts);
      write_dataset(file.get(), "pad_id", H5T_NATIVE_INT64, std::vector<int64_t>{c.examples.pad_id});
      if (H5Fflush(file.get(), H5F_SCOPE_GLOBAL) < 0) throw std::runtime_error("cannot flush");
    } catch (const std::exception& e) {
      error = e.what();
    }
  }
  H5E_END_TRY;
  if (!error.empty()) throw std::runtime_error(temp.string() + ": cannot write the token cache: " + error);
  // fsync before rename so a crash cannot leave a renamed but empty file.
  if (int fd = ::open(temp.c_str(), O_RDONLY); fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
  std::filesystem::rename(temp, path);
  cleanup.armed = false;
}

}  // namespace qtrain
