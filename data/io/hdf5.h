// The HDF5 files qtrain writes (trainer_state.h5, the token cache) go through this one small layer:
// RAII ids, HDF5's error printing silenced (our errors name the file and the object instead), and the
// few typed reads and writes those files need: int64 and string attributes, and datasets of fp32, uint8,
// int32 or int64 of any rank. Objects are named by their path from the root ("optimizer/0/exp_avg");
// attributes sit on the root ("/") or on a named group or dataset. Every error names the file and the
// dataset or attribute: a read of a malformed or unexpected file throws InputError (exit 3), a failed
// write std::runtime_error. Datasets are stored little-endian, uncompressed and contiguous.
#pragma once

#include <hdf5.h>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include <ATen/ATen.h>

namespace qtrain::hdf5 {

// Turns off HDF5's automatic error-stack printing for its lifetime and restores what was there before.
// Unlike H5E_BEGIN_TRY / H5E_END_TRY, an exception may leave the scope. Every File call holds one.
class QuietErrors {
 public:
  QuietErrors();
  ~QuietErrors();
  QuietErrors(const QuietErrors&) = delete;
  QuietErrors& operator=(const QuietErrors&) = delete;

 private:
  H5E_auto2_t fn_ = nullptr;
  void* data_ = nullptr;
};

// An HDF5 id closed by the function that matches its kind (H5Dclose, H5Sclose, ...). A negative id is
// "none": valid() is false and nothing is closed.
class Id {
 public:
  Id() = default;
  Id(hid_t id, herr_t (*close)(hid_t)) : id_(id), close_(close) {}
  ~Id() { reset(); }
  Id(Id&& o) noexcept : id_(o.id_), close_(o.close_) { o.id_ = -1; }
  Id& operator=(Id&& o) noexcept;
  Id(const Id&) = delete;
  Id& operator=(const Id&) = delete;

  hid_t get() const { return id_; }
  bool valid() const { return id_ >= 0; }
  herr_t reset();  // close now; returns the close function's result (0 when there was nothing to close)

 private:
  hid_t id_ = -1;
  herr_t (*close_)(hid_t) = nullptr;
};

class File {
 public:
  // Sealed files: create() reserves a 512-byte user block, close() writes into it the file's size and
  // a 64-bit hash of the rest, and open() checks both before libhdf5 reads a byte (libhdf5 can crash
  // on corrupt input). An unsealed file (never closed, or written by another tool) does not open:
  // qtrain reads only the HDF5 files it writes. h5py and h5dump read sealed files as usual.
  static File create(const std::filesystem::path& path);  // truncates; std::runtime_error naming the file
  static File open(const std::filesystem::path& path);    // read-only; InputError naming the file and the fault

  File(File&&) = default;
  File& operator=(File&&) = default;

  const std::filesystem::path& path() const { return path_; }
  hid_t id() const { return file_.get(); }

  // A group or dataset at this path ("a/b/c": false when any part is missing; "/" is the root).
  bool has(const std::string& object) const;
  bool has_attribute(const std::string& object, const std::string& name) const;

  // Attributes: a scalar int64 or a fixed-length string (an existing attribute of the name is replaced).
  // Reads accept fixed- and variable-length strings (what h5py writes) and any integer type.
  void write_attribute(const std::string& object, const std::string& name, int64_t value);
  void write_attribute(const std::string& object, const std::string& name, const std::string& value);
  int64_t read_int64_attribute(const std::string& object, const std::string& name) const;
  std::string read_string_attribute(const std::string& object, const std::string& name) const;

  // A dataset of a CPU-or-device tensor's values: fp32, uint8, int32 or int64, any rank (a 0-d tensor
  // is a scalar dataset); groups on the way are created.
  void write_tensor(const std::string& name, const at::Tensor& t);
  // A CPU tensor with the stored shape and dtype; InputError for any other stored type.
  at::Tensor read_tensor(const std::string& name) const;

  // The same for a 1-D dataset and a std::vector, without a tensor in between (large token arrays).
  // T is float, uint8_t, int32_t or int64_t; a read requires a 1-D dataset of exactly that type.
  template <class T>
  void write_vector(const std::string& name, const std::vector<T>& v);
  template <class T>
  std::vector<T> read_vector(const std::string& name) const;

  void flush();  // to the OS (not to the disk: publish_file fsyncs)
  void close();  // seals a created file; reports a failed close, which a destructor cannot

 private:
  struct Dataset {
    Id id;
    std::vector<int64_t> shape;
    at::ScalarType dtype;
  };
  File(std::filesystem::path path, Id file, bool writable);
  Dataset open_dataset(const std::string& name) const;
  void write_raw(const std::string& name, at::ScalarType dtype, const std::vector<int64_t>& shape, const void* data);
  void read_raw(const Dataset& ds, const std::string& name, int64_t numel, void* out) const;
  void check_writable(const std::string& what) const;

  std::filesystem::path path_;
  Id file_;
  bool writable_ = false;
  uint64_t file_bytes_ = 0;  // for readers: no dataset may claim more than the file holds
};

}  // namespace qtrain::hdf5
