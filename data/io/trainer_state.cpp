#include "data/io/trainer_state.h"

#include <fcntl.h>
#include <hdf5.h>
#include <unistd.h>

#include <random>

#include "data/error.h"

namespace qtrain {
namespace fs = std::filesystem;

namespace {

// RAII for HDF5 ids: every id is closed by the function that matches its kind.
class Id {
 public:
  Id(hid_t id, herr_t (*close)(hid_t), const std::string& what) : id_(id), close_(close) {
    if (id_ < 0) throw std::runtime_error("HDF5: " + what + " failed");
  }
  ~Id() { close_(id_); }
  Id(const Id&) = delete;
  Id& operator=(const Id&) = delete;
  operator hid_t() const { return id_; }

 private:
  hid_t id_;
  herr_t (*close_)(hid_t);
};

void check(herr_t rc, const std::string& what) {
  if (rc < 0) throw std::runtime_error("HDF5: " + what + " failed");
}

void write_tensor(hid_t file, const std::string& name, const at::Tensor& t) {
  at::Tensor c = t.detach().to(at::kCPU).contiguous();
  TORCH_CHECK(c.scalar_type() == at::kFloat || c.scalar_type() == at::kByte, "trainer_state: ", name, " must be fp32 or uint8");
  std::vector<hsize_t> dims(c.sizes().begin(), c.sizes().end());
  if (dims.empty()) dims.push_back(1);
  Id space(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr), H5Sclose, "dataspace for " + name);
  Id lcpl(H5Pcreate(H5P_LINK_CREATE), H5Pclose, "link property list");
  check(H5Pset_create_intermediate_group(lcpl, 1), "intermediate groups");
  const hid_t type = c.scalar_type() == at::kFloat ? H5T_NATIVE_FLOAT : H5T_NATIVE_UINT8;
  const hid_t ftype = c.scalar_type() == at::kFloat ? H5T_IEEE_F32LE : H5T_STD_U8LE;
  Id ds(H5Dcreate2(file, name.c_str(), ftype, space, lcpl, H5P_DEFAULT, H5P_DEFAULT), H5Dclose, "create " + name);
  if (c.numel() > 0) check(H5Dwrite(ds, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, c.data_ptr()), "write " + name);
}

at::Tensor read_tensor(hid_t file, const std::string& name, const std::string& path) {
  if (H5Lexists(file, name.c_str(), H5P_DEFAULT) <= 0) throw InputError(path + ": missing dataset '" + name + "'");
  Id ds(H5Dopen2(file, name.c_str(), H5P_DEFAULT), H5Dclose, "open " + name);
  Id space(H5Dget_space(ds), H5Sclose, "dataspace of " + name);
  const int rank = H5Sget_simple_extent_ndims(space);
  std::vector<hsize_t> dims(rank);
  H5Sget_simple_extent_dims(space, dims.data(), nullptr);
  Id type(H5Dget_type(ds), H5Tclose, "type of " + name);
  const bool is_float = H5Tget_class(type) == H5T_FLOAT;
  at::Tensor t = at::empty(std::vector<int64_t>(dims.begin(), dims.end()), is_float ? at::kFloat : at::kByte);
  if (t.numel() > 0)
    check(H5Dread(ds, is_float ? H5T_NATIVE_FLOAT : H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, t.data_ptr()), "read " + name);
  return t;
}

void write_attr_i64(hid_t obj, const char* name, int64_t v) {
  Id space(H5Screate(H5S_SCALAR), H5Sclose, "scalar space");
  Id a(H5Acreate2(obj, name, H5T_STD_I64LE, space, H5P_DEFAULT, H5P_DEFAULT), H5Aclose, std::string("attribute ") + name);
  check(H5Awrite(a, H5T_NATIVE_INT64, &v), std::string("write attribute ") + name);
}

int64_t read_attr_i64(hid_t obj, const char* name, const std::string& path) {
  if (H5Aexists(obj, name) <= 0) throw InputError(path + ": missing attribute '" + name + "'");
  Id a(H5Aopen(obj, name, H5P_DEFAULT), H5Aclose, std::string("attribute ") + name);
  int64_t v = 0;
  check(H5Aread(a, H5T_NATIVE_INT64, &v), std::string("read attribute ") + name);
  return v;
}

void write_attr_str(hid_t obj, const char* name, const std::string& s) {
  Id type(H5Tcopy(H5T_C_S1), H5Tclose, "string type");
  check(H5Tset_size(type, s.empty() ? 1 : s.size()), "string size");
  Id space(H5Screate(H5S_SCALAR), H5Sclose, "scalar space");
  Id a(H5Acreate2(obj, name, type, space, H5P_DEFAULT, H5P_DEFAULT), H5Aclose, std::string("attribute ") + name);
  check(H5Awrite(a, type, s.empty() ? "" : s.c_str()), std::string("write attribute ") + name);
}

std::string read_attr_str(hid_t obj, const char* name, const std::string& path) {
  if (H5Aexists(obj, name) <= 0) throw InputError(path + ": missing attribute '" + name + "'");
  Id a(H5Aopen(obj, name, H5P_DEFAULT), H5Aclose, std::string("attribute ") + name);
  Id type(H5Aget_type(a), H5Tclose, "attribute type");
  std::string s(H5Tget_size(type), '\0');
  check(H5Aread(a, type, s.data()), std::string("read attribute ") + name);
  return s.substr(0, s.find('\0'));
}

}  // namespace

void save_trainer_state(const fs::path& path, const TrainerState& s) {
  fs::path tmp = path;
  tmp += ".tmp." + std::to_string(std::random_device{}());
  try {
    try {
    {
      Id f(H5Fcreate(tmp.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT), H5Fclose, "create " + tmp.string());
      write_attr_i64(f, "format_version", 2);
      write_attr_i64(f, "step", s.step);
      write_attr_i64(f, "tokens", s.tokens);
      write_attr_i64(f, "cursor_epoch", s.cursor_epoch);
      write_attr_i64(f, "cursor_position", s.cursor_position);
      write_attr_i64(f, "cursor_seed", static_cast<int64_t>(s.cursor_seed));
      write_attr_i64(f, "total_steps", s.total_steps);
      write_attr_str(f, "recipe_hash", s.recipe_hash);
      if (s.rng_state.defined()) write_tensor(f, "rng_state", s.rng_state);
      write_attr_str(f, "rng_device", s.rng_device);
      write_attr_str(f, "optimizer", s.optimizer);
      write_attr_i64(f, "num_optimizer_tensors", static_cast<int64_t>(s.optimizer_state.size()));
      for (std::size_t i = 0; i < s.optimizer_state.size(); ++i) {
        const std::string d = "optimizer/" + std::to_string(i);
        write_tensor(f, d, s.optimizer_state[i].second);
        Id ds(H5Dopen2(f, d.c_str(), H5P_DEFAULT), H5Dclose, "open " + d);
        write_attr_str(ds, "name", s.optimizer_state[i].first);
      }
      check(H5Fflush(f, H5F_SCOPE_GLOBAL), "flush");
    }
    // H5Fflush reaches the page cache only: fsync before the rename, or a crash could leave an empty
    // trainer_state.h5 under the final name.
    const int fd = ::open(tmp.c_str(), O_RDONLY);
    if (fd < 0 || ::fsync(fd) != 0) {
      if (fd >= 0) ::close(fd);
      throw std::runtime_error(tmp.string() + ": cannot fsync the trainer state");
    }
    ::close(fd);
    } catch (const std::runtime_error& e) {
      throw std::runtime_error(path.string() + ": writing the trainer state failed: " + e.what());
    }
    fs::rename(tmp, path);
  } catch (...) {
    std::error_code ec;
    fs::remove(tmp, ec);
    throw;
  }
}

TrainerState load_trainer_state(const fs::path& path) {
  if (!fs::exists(path)) throw InputError(path.string() + ": no trainer state (is this a qtrain checkpoint?)");
  H5E_auto2_t old_fn;
  void* old_data;
  H5Eget_auto2(H5E_DEFAULT, &old_fn, &old_data);
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);  // our errors name the file; HDF5's stack dump would not help
  struct Restore {
    H5E_auto2_t fn;
    void* data;
    ~Restore() { H5Eset_auto2(H5E_DEFAULT, fn, data); }
  } restore{old_fn, old_data};
  const hid_t raw = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  if (raw < 0) throw InputError(path.string() + ": not a readable HDF5 file (truncated or corrupt checkpoint?)");
  Id f(raw, H5Fclose, "open");
  const std::string p = path.string();
  if (const int64_t v = read_attr_i64(f, "format_version", p); v != 2)
    throw InputError(p + ": trainer_state format_version " + std::to_string(v) +
                     (v == 1 ? " was written by an earlier qtrain (before the optimizer owned its state): start the run again"
                             : " is unknown (this qtrain reads version 2)"));
  TrainerState s;
  s.step = read_attr_i64(f, "step", p);
  s.tokens = read_attr_i64(f, "tokens", p);
  s.cursor_epoch = read_attr_i64(f, "cursor_epoch", p);
  s.cursor_position = read_attr_i64(f, "cursor_position", p);
  s.cursor_seed = static_cast<uint64_t>(read_attr_i64(f, "cursor_seed", p));
  s.total_steps = read_attr_i64(f, "total_steps", p);
  s.recipe_hash = read_attr_str(f, "recipe_hash", p);
  if (H5Lexists(f, "rng_state", H5P_DEFAULT) > 0) s.rng_state = read_tensor(f, "rng_state", p);
  s.rng_device = read_attr_str(f, "rng_device", p);
  s.optimizer = read_attr_str(f, "optimizer", p);
  const int64_t n = read_attr_i64(f, "num_optimizer_tensors", p);
  if (n < 0 || n > (int64_t{1} << 24)) throw InputError(p + ": num_optimizer_tensors " + std::to_string(n) + " is out of range");
  for (int64_t i = 0; i < n; ++i) {
    const std::string d = "optimizer/" + std::to_string(i);
    at::Tensor t = read_tensor(f, d, p);
    Id ds(H5Dopen2(f, d.c_str(), H5P_DEFAULT), H5Dclose, "open " + d);
    s.optimizer_state.emplace_back(read_attr_str(ds, "name", p), std::move(t));
  }
  return s;
}

}  // namespace qtrain
