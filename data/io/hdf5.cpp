#include "data/io/hdf5.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <fstream>
#include <type_traits>

#include "data/error.h"

namespace qtrain::hdf5 {
namespace fs = std::filesystem;

namespace {

// The four element types qtrain stores, in memory (native) and on disk (little-endian, fixed).
hid_t memory_type(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return H5T_NATIVE_FLOAT;
    case at::kByte: return H5T_NATIVE_UINT8;
    case at::kInt: return H5T_NATIVE_INT32;
    case at::kLong: return H5T_NATIVE_INT64;
    default: return -1;
  }
}

hid_t disk_type(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return H5T_IEEE_F32LE;
    case at::kByte: return H5T_STD_U8LE;
    case at::kInt: return H5T_STD_I32LE;
    case at::kLong: return H5T_STD_I64LE;
    default: return -1;
  }
}

constexpr const char* kTypes = "fp32, uint8, int32 or int64";

// The tensor dtype of a stored type, or nullopt for any other (fp64, int16, strings, ...).
std::optional<at::ScalarType> stored_dtype(hid_t type) {
  const H5T_class_t cls = H5Tget_class(type);
  const size_t size = H5Tget_size(type);
  if (cls == H5T_FLOAT && size == 4) return at::kFloat;
  if (cls != H5T_INTEGER) return std::nullopt;
  const bool is_signed = H5Tget_sign(type) == H5T_SGN_2;
  if (size == 1 && !is_signed) return at::kByte;
  if (size == 4 && is_signed) return at::kInt;
  if (size == 8 && is_signed) return at::kLong;
  return std::nullopt;
}

std::string describe_type(hid_t type) {
  const H5T_class_t cls = H5Tget_class(type);
  const std::string size = std::to_string(H5Tget_size(type)) + "-byte ";
  switch (cls) {
    case H5T_FLOAT: return size + "float";
    case H5T_INTEGER: return size + (H5Tget_sign(type) == H5T_SGN_2 ? "signed" : "unsigned") + " integer";
    case H5T_STRING: return "string";
    default: return "HDF5 type class " + std::to_string(static_cast<int>(cls));
  }
}

template <class T>
constexpr at::ScalarType dtype_of() {
  if constexpr (std::is_same_v<T, float>) return at::kFloat;
  else if constexpr (std::is_same_v<T, uint8_t>) return at::kByte;
  else if constexpr (std::is_same_v<T, int32_t>) return at::kInt;
  else {
    static_assert(std::is_same_v<T, int64_t>, "hdf5: vectors of float, uint8_t, int32_t or int64_t only");
    return at::kLong;
  }
}

bool is_root(const std::string& object) { return object.empty() || object == "/" || object == "."; }
const char* object_arg(const std::string& object) { return is_root(object) ? "/" : object.c_str(); }

std::string attribute_label(const std::string& object, const std::string& name) {
  return "attribute '" + name + "'" + (is_root(object) ? "" : " of '" + object + "'");
}

// The seal (see the header): a user block at the start of every file qtrain writes holds the
// file's size and a hash of everything after the block. libhdf5 trusts its input (a few flipped
// bytes can crash it: docs/FUZZING.md), so a file is checked before libhdf5 ever reads it.
constexpr hsize_t kUserBlock = 512;
constexpr char kSealMagic[] = "QTRAINH5";  // 8 bytes
constexpr char kHdf5Signature[] = "\x89HDF\r\n\x1a\n";

// 64-bit multiply-xorshift over little-endian words: not cryptographic, but any corruption or
// truncation changes it with probability 1 - 2^-64, at memory speed.
uint64_t hash_after_user_block(const fs::path& path, uint64_t size) {
  std::ifstream in(path, std::ios::binary);
  in.seekg(static_cast<std::streamoff>(kUserBlock));
  std::vector<char> buf(1 << 20);
  uint64_t h = 0xcbf29ce484222325ull ^ size;
  uint64_t left = size - kUserBlock;
  while (left > 0 && in) {
    const std::size_t n = static_cast<std::size_t>(std::min<uint64_t>(left, buf.size()));
    in.read(buf.data(), static_cast<std::streamsize>(n));
    if (static_cast<std::size_t>(in.gcount()) != n) break;
    std::size_t i = 0;
    for (; i + 8 <= n; i += 8) {
      uint64_t w;
      std::memcpy(&w, buf.data() + i, 8);
      h = (h ^ w) * 0x100000001b3ull;
      h ^= h >> 29;
    }
    for (; i < n; ++i) h = (h ^ static_cast<unsigned char>(buf[i])) * 0x100000001b3ull;
    left -= n;
  }
  return left == 0 ? h : ~h;
}

void seal(const fs::path& path) {
  const uint64_t size = fs::file_size(path);
  char header[kUserBlock] = {};
  std::snprintf(header, sizeof header, "%s\nsize %llu\nhash %016llx\n", kSealMagic, static_cast<unsigned long long>(size),
                static_cast<unsigned long long>(hash_after_user_block(path, size)));
  std::fstream f(path, std::ios::binary | std::ios::in | std::ios::out);
  f.write(header, sizeof header);
  f.flush();
  if (!f) throw std::runtime_error(path.string() + ": cannot write the HDF5 user block (disk full?)");
}

// Throws InputError unless `path` is a sealed file whose size and hash match. qtrain reads only HDF5
// files it wrote (checkpoint state, token caches), so an unsealed one is refused, not trusted.
void check_seal(const fs::path& path) {
  const uint64_t size = fs::file_size(path);
  std::array<char, kUserBlock> header{};
  std::ifstream in(path, std::ios::binary);
  in.read(header.data(), static_cast<std::streamsize>(std::min<uint64_t>(size, kUserBlock)));
  if (size >= 8 && std::memcmp(header.data(), kHdf5Signature, 8) == 0)
    throw InputError(path.string() + ": an HDF5 file qtrain did not write (no qtrain seal in its user block); qtrain reads "
                     "only its own checkpoint state and token caches");
  if (size < kUserBlock || std::memcmp(header.data(), kSealMagic, 8) != 0)
    throw InputError(path.string() + ": not an HDF5 file, or one whose writing never finished (no qtrain seal)");
  unsigned long long stored_size = 0, stored_hash = 0;
  header.back() = '\0';
  if (std::sscanf(header.data() + 8, "\nsize %llu\nhash %llx", &stored_size, &stored_hash) != 2)
    throw InputError(path.string() + ": the qtrain seal in the HDF5 user block is malformed");
  if (stored_size != size)
    throw InputError(path.string() + ": the file has " + std::to_string(size) + " bytes, its seal says " + std::to_string(stored_size) +
                     " (truncated or appended to)");
  if (hash_after_user_block(path, size) != stored_hash)
    throw InputError(path.string() + ": contents do not match the seal's hash (the file is corrupt)");
}

}  // namespace

// ---- QuietErrors, Id ----

QuietErrors::QuietErrors() {
  H5Eget_auto2(H5E_DEFAULT, &fn_, &data_);
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
}

QuietErrors::~QuietErrors() { H5Eset_auto2(H5E_DEFAULT, fn_, data_); }

Id& Id::operator=(Id&& o) noexcept {
  if (this != &o) {
    reset();
    id_ = o.id_;
    close_ = o.close_;
    o.id_ = -1;
  }
  return *this;
}

herr_t Id::reset() {
  herr_t rc = 0;
  if (id_ >= 0 && close_) rc = close_(id_);
  id_ = -1;
  return rc;
}

// ---- File ----

File::File(fs::path path, Id file, bool writable) : path_(std::move(path)), file_(std::move(file)), writable_(writable) {
  if (!writable_) {
    std::error_code ec;
    file_bytes_ = fs::file_size(path_, ec);
    if (ec) file_bytes_ = 0;
  }
}

File File::create(const fs::path& path) {
  QuietErrors quiet;
  Id fcpl(H5Pcreate(H5P_FILE_CREATE), H5Pclose);
  if (!fcpl.valid() || H5Pset_userblock(fcpl.get(), kUserBlock) < 0)
    throw std::runtime_error(path.string() + ": cannot set up the HDF5 user block");
  Id f(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, fcpl.get(), H5P_DEFAULT), H5Fclose);
  if (!f.valid()) throw std::runtime_error(path.string() + ": cannot create the HDF5 file (is its directory writable?)");
  return File(path, std::move(f), true);
}

File File::open(const fs::path& path) {
  QuietErrors quiet;
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) throw InputError(path.string() + ": no such file");
  check_seal(path);
  Id f(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose);
  if (!f.valid()) throw InputError(path.string() + ": not a readable HDF5 file (truncated or corrupt)");
  return File(path, std::move(f), false);
}

void File::check_writable(const std::string& what) const {
  if (!writable_) throw std::logic_error(path_.string() + ": " + what + ": the file is open read-only");
}

bool File::has(const std::string& object) const {
  QuietErrors quiet;
  if (is_root(object)) return true;
  // H5Lexists fails, rather than answering false, when a group on the way is missing: test each prefix.
  for (size_t slash = object.find('/', 1);; slash = object.find('/', slash + 1)) {
    const std::string prefix = object.substr(0, slash);
    if (H5Lexists(file_.get(), prefix.c_str(), H5P_DEFAULT) <= 0) return false;
    if (slash == std::string::npos) return true;
  }
}

bool File::has_attribute(const std::string& object, const std::string& name) const {
  if (!has(object)) return false;
  QuietErrors quiet;
  return H5Aexists_by_name(file_.get(), object_arg(object), name.c_str(), H5P_DEFAULT) > 0;
}

// ---- attributes ----

namespace {
// Creates (replacing) a scalar attribute of `type` and writes `value` as `mem_type`.
void write_scalar_attribute(const File& f, const std::string& object, const std::string& name, hid_t type,
                            hid_t mem_type, const void* value) {
  const std::string what = f.path().string() + ": cannot write " + attribute_label(object, name);
  if (!f.has(object)) throw std::runtime_error(what + ": no such group or dataset");
  if (f.has_attribute(object, name) && H5Adelete_by_name(f.id(), object_arg(object), name.c_str(), H5P_DEFAULT) < 0)
    throw std::runtime_error(what + ": cannot replace the existing one");
  Id space(H5Screate(H5S_SCALAR), H5Sclose);
  Id a(H5Acreate_by_name(f.id(), object_arg(object), name.c_str(), type, space.get(), H5P_DEFAULT, H5P_DEFAULT,
                         H5P_DEFAULT),
       H5Aclose);
  if (!space.valid() || !a.valid() || H5Awrite(a.get(), mem_type, value) < 0) throw std::runtime_error(what);
}

// Opens an attribute that must exist and hold a single value.
Id open_attribute(const File& f, const std::string& object, const std::string& name) {
  const std::string label = f.path().string() + ": " + attribute_label(object, name);
  if (!f.has_attribute(object, name)) throw InputError(f.path().string() + ": missing " + attribute_label(object, name));
  Id a(H5Aopen_by_name(f.id(), object_arg(object), name.c_str(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  if (!a.valid()) throw InputError(label + ": cannot be opened (corrupt file?)");
  Id space(H5Aget_space(a.get()), H5Sclose);
  if (!space.valid() || H5Sget_simple_extent_npoints(space.get()) != 1)
    throw InputError(label + ": expected a single value, found an array");
  return a;
}
}  // namespace

void File::write_attribute(const std::string& object, const std::string& name, int64_t value) {
  QuietErrors quiet;
  check_writable(attribute_label(object, name));
  write_scalar_attribute(*this, object, name, H5T_STD_I64LE, H5T_NATIVE_INT64, &value);
}

void File::write_attribute(const std::string& object, const std::string& name, const std::string& value) {
  QuietErrors quiet;
  check_writable(attribute_label(object, name));
  // Fixed length, NUL-padded (numpy's 'S' type; h5py reads it as bytes). HDF5 has no zero-length string
  // type, so "" is stored as one NUL.
  Id type(H5Tcopy(H5T_C_S1), H5Tclose);
  if (!type.valid() || H5Tset_size(type.get(), std::max<size_t>(value.size(), 1)) < 0 ||
      H5Tset_strpad(type.get(), H5T_STR_NULLPAD) < 0)
    throw std::runtime_error(path_.string() + ": cannot write " + attribute_label(object, name) + ": string type");
  const std::string padded = value.empty() ? std::string(1, '\0') : value;
  write_scalar_attribute(*this, object, name, type.get(), type.get(), padded.data());
}

int64_t File::read_int64_attribute(const std::string& object, const std::string& name) const {
  QuietErrors quiet;
  const Id a = open_attribute(*this, object, name);
  const Id type(H5Aget_type(a.get()), H5Tclose);
  if (!type.valid() || H5Tget_class(type.get()) != H5T_INTEGER)
    throw InputError(path_.string() + ": " + attribute_label(object, name) + ": expected an integer, found " +
                     (type.valid() ? describe_type(type.get()) : std::string("an unreadable type")));
  int64_t v = 0;
  if (H5Aread(a.get(), H5T_NATIVE_INT64, &v) < 0)
    throw InputError(path_.string() + ": " + attribute_label(object, name) + ": cannot be read as int64");
  return v;
}

std::string File::read_string_attribute(const std::string& object, const std::string& name) const {
  QuietErrors quiet;
  const Id a = open_attribute(*this, object, name);
  const std::string label = path_.string() + ": " + attribute_label(object, name);
  const Id type(H5Aget_type(a.get()), H5Tclose);
  if (!type.valid() || H5Tget_class(type.get()) != H5T_STRING)
    throw InputError(label + ": expected a string, found " +
                     (type.valid() ? describe_type(type.get()) : std::string("an unreadable type")));
  if (H5Tis_variable_str(type.get()) > 0) {
    // Variable length (h5py's default for str): HDF5 allocates the text; the memory type keeps the file's
    // character set, since HDF5 will not convert between ASCII and UTF-8.
    Id mem(H5Tcopy(H5T_C_S1), H5Tclose);
    char* text = nullptr;
    if (!mem.valid() || H5Tset_size(mem.get(), H5T_VARIABLE) < 0 || H5Tset_cset(mem.get(), H5Tget_cset(type.get())) < 0 ||
        H5Aread(a.get(), mem.get(), &text) < 0)
      throw InputError(label + ": cannot be read as a string");
    std::string s = text ? text : "";
    H5free_memory(text);
    return s;
  }
  std::string s(H5Tget_size(type.get()), '\0');
  if (H5Aread(a.get(), type.get(), s.data()) < 0) throw InputError(label + ": cannot be read as a string");
  return s.substr(0, s.find('\0'));  // fixed-length strings are NUL-padded or NUL-terminated
}

// ---- datasets ----

void File::write_raw(const std::string& name, at::ScalarType dtype, const std::vector<int64_t>& shape, const void* data) {
  const std::string what = path_.string() + ": cannot write dataset '" + name + "'";
  std::vector<hsize_t> dims(shape.begin(), shape.end());
  Id space(dims.empty() ? H5Screate(H5S_SCALAR) : H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr),
           H5Sclose);
  Id lcpl(H5Pcreate(H5P_LINK_CREATE), H5Pclose);
  if (!space.valid() || !lcpl.valid() || H5Pset_create_intermediate_group(lcpl.get(), 1) < 0)
    throw std::runtime_error(what + ": cannot make its dataspace");
  if (has(name)) throw std::runtime_error(what + ": it exists already");
  Id ds(H5Dcreate2(file_.get(), name.c_str(), disk_type(dtype), space.get(), lcpl.get(), H5P_DEFAULT, H5P_DEFAULT),
        H5Dclose);
  if (!ds.valid()) throw std::runtime_error(what + ": cannot create it");
  int64_t numel = 1;
  for (int64_t d : shape) numel *= d;
  if (numel > 0 && H5Dwrite(ds.get(), memory_type(dtype), H5S_ALL, H5S_ALL, H5P_DEFAULT, data) < 0)
    throw std::runtime_error(what + " (disk full?)");
}

File::Dataset File::open_dataset(const std::string& name) const {
  const std::string label = path_.string() + ": dataset '" + name + "'";
  if (!has(name)) throw InputError(path_.string() + ": missing dataset '" + name + "'");
  Id ds(H5Dopen2(file_.get(), name.c_str(), H5P_DEFAULT), H5Dclose);
  if (!ds.valid()) throw InputError(label + ": cannot be opened (not a dataset, or a corrupt file)");
  const Id type(H5Dget_type(ds.get()), H5Tclose);
  const Id space(H5Dget_space(ds.get()), H5Sclose);
  if (!type.valid() || !space.valid()) throw InputError(label + ": unreadable type or shape (corrupt file?)");
  const auto stored = stored_dtype(type.get());
  if (!stored) throw InputError(label + ": expected " + kTypes + " elements, found " + describe_type(type.get()));
  const H5S_class_t kind = H5Sget_simple_extent_type(space.get());
  if (kind != H5S_SCALAR && kind != H5S_SIMPLE) throw InputError(label + ": has a null dataspace (no values)");
  const int rank = H5Sget_simple_extent_ndims(space.get());
  if (rank < 0) throw InputError(label + ": unreadable shape (corrupt file?)");
  std::vector<hsize_t> dims(rank);
  H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr);
  std::vector<int64_t> shape(dims.begin(), dims.end());
  // A corrupt header can claim any shape; datasets here are uncompressed, so the data of a file opened
  // for reading cannot exceed the file. Checked before allocating, and without overflow.
  const bool empty = std::find(dims.begin(), dims.end(), hsize_t{0}) != dims.end();
  uint64_t bytes = H5Tget_size(type.get());
  for (size_t i = 0; !writable_ && !empty && i < dims.size(); ++i) {
    if (dims[i] > file_bytes_ / bytes)
      throw InputError(label + ": claims shape " + c10::str(at::IntArrayRef(shape)) + ", more data than the file's " +
                       std::to_string(file_bytes_) + " bytes (corrupt file?)");
    bytes *= dims[i];
  }
  return {std::move(ds), std::move(shape), *stored};
}

void File::read_raw(const Dataset& ds, const std::string& name, int64_t numel, void* out) const {
  if (numel > 0 && H5Dread(ds.id.get(), memory_type(ds.dtype), H5S_ALL, H5S_ALL, H5P_DEFAULT, out) < 0)
    throw InputError(path_.string() + ": dataset '" + name + "': cannot be read (truncated or corrupt file?)");
}

void File::write_tensor(const std::string& name, const at::Tensor& t) {
  QuietErrors quiet;
  check_writable("dataset '" + name + "'");
  if (!t.defined()) throw std::invalid_argument(path_.string() + ": dataset '" + name + "': the tensor is undefined");
  const at::Tensor c = t.detach().to(at::kCPU).contiguous();
  if (memory_type(c.scalar_type()) < 0)
    throw std::invalid_argument(path_.string() + ": dataset '" + name + "': expected a " + kTypes + " tensor, found " +
                                std::string(c10::toString(c.scalar_type())));
  write_raw(name, c.scalar_type(), c.sizes().vec(), c.data_ptr());
}

at::Tensor File::read_tensor(const std::string& name) const {
  QuietErrors quiet;
  const Dataset ds = open_dataset(name);
  at::Tensor t = at::empty(ds.shape, ds.dtype);
  read_raw(ds, name, t.numel(), t.data_ptr());
  return t;
}

template <class T>
void File::write_vector(const std::string& name, const std::vector<T>& v) {
  QuietErrors quiet;
  check_writable("dataset '" + name + "'");
  write_raw(name, dtype_of<T>(), {static_cast<int64_t>(v.size())}, v.data());
}

template <class T>
std::vector<T> File::read_vector(const std::string& name) const {
  QuietErrors quiet;
  const Dataset ds = open_dataset(name);
  const std::string label = path_.string() + ": dataset '" + name + "'";
  if (ds.shape.size() != 1) throw InputError(label + ": expected 1-D, found shape " + c10::str(at::IntArrayRef(ds.shape)));
  if (ds.dtype != dtype_of<T>())
    throw InputError(label + ": expected " + c10::toString(dtype_of<T>()) + " elements, found " + c10::toString(ds.dtype));
  std::vector<T> v(ds.shape[0]);
  read_raw(ds, name, ds.shape[0], v.data());
  return v;
}

template void File::write_vector(const std::string&, const std::vector<float>&);
template void File::write_vector(const std::string&, const std::vector<uint8_t>&);
template void File::write_vector(const std::string&, const std::vector<int32_t>&);
template void File::write_vector(const std::string&, const std::vector<int64_t>&);
template std::vector<float> File::read_vector(const std::string&) const;
template std::vector<uint8_t> File::read_vector(const std::string&) const;
template std::vector<int32_t> File::read_vector(const std::string&) const;
template std::vector<int64_t> File::read_vector(const std::string&) const;

void File::flush() {
  QuietErrors quiet;
  if (H5Fflush(file_.get(), H5F_SCOPE_GLOBAL) < 0) throw std::runtime_error(path_.string() + ": cannot flush the HDF5 file");
}

void File::close() {
  QuietErrors quiet;
  if (file_.reset() < 0) throw std::runtime_error(path_.string() + ": closing the HDF5 file failed (disk full?)");
  if (writable_) seal(path_);
  writable_ = false;
}

}  // namespace qtrain::hdf5
