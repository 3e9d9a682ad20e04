// data/io/hdf5: every supported dtype and rank round-trips bit for bit (random values, a fresh seed
// printed); attributes on the root and on groups; existence checks through missing intermediate groups;
// every failure names the file and the dataset or attribute; corrupt and truncated files and a dataset
// that claims more data than the file holds are InputErrors, never a crash or a huge allocation.
#include <gtest/gtest.h>

#include <fstream>
#include <random>

#include "data/error.h"
#include "data/io/hdf5.h"
#include "tests/scratch_dir.h"

namespace qtrain {
namespace {
namespace fs = std::filesystem;

class Hdf5Test : public ::testing::Test {
 protected:
  // The message of the InputError `f` throws ("" when it throws none).
  template <class F>
  static std::string input_error(F f) {
    try {
      f();
    } catch (const InputError& e) {
      return e.what();
    }
    return "";
  }
  test_tools::ScratchDir scratch_{"hdf5"};
  const fs::path& dir_ = scratch_.path;
};

TEST_F(Hdf5Test, TensorsOfEveryTypeAndRankRoundTripExactly) {
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  at::manual_seed(seed);
  const std::vector<std::pair<std::string, at::Tensor>> tensors = {
      {"f32_2d", at::randn({7, 13})},
      {"f32_scalar", at::randn({})},
      {"f32_empty", at::empty({0, 5})},
      {"u8_1d", at::randint(0, 256, {33}, at::kByte)},
      {"i32_3d", at::randint(-(1 << 30), 1 << 30, {2, 3, 4}, at::kInt)},
      {"i64_1d", at::randint(-(int64_t{1} << 62), int64_t{1} << 62, {9}, at::kLong)},
      {"optimizer/0/exp_avg", at::randn({3, 4}).t()},  // strided input; groups created on the way
  };
  const fs::path p = dir_ / "t.h5";
  {
    auto f = hdf5::File::create(p);
    for (const auto& [name, t] : tensors) f.write_tensor(name, t);
    f.close();
  }
  const auto f = hdf5::File::open(p);
  for (const auto& [name, t] : tensors) {
    const at::Tensor got = f.read_tensor(name);
    EXPECT_EQ(got.scalar_type(), t.scalar_type()) << name;
    EXPECT_EQ(got.sizes(), t.sizes()) << name;
    EXPECT_TRUE(at::equal(got, t.contiguous())) << name;
  }
}

TEST_F(Hdf5Test, VectorsRoundTripAndTypesAreChecked) {
  const fs::path p = dir_ / "v.h5";
  const std::vector<int32_t> tokens = {1, -5, 1 << 30};
  const std::vector<uint8_t> trained = {0, 1, 255};
  const std::vector<int64_t> offsets = {0, int64_t{1} << 40};
  const std::vector<float> empty;
  {
    auto f = hdf5::File::create(p);
    f.write_vector("tokens", tokens);
    f.write_vector("trained", trained);
    f.write_vector("offsets", offsets);
    f.write_vector("empty", empty);
    f.write_tensor("matrix", at::zeros({2, 2}));
    f.close();
  }
  const auto f = hdf5::File::open(p);
  EXPECT_EQ(f.read_vector<int32_t>("tokens"), tokens);
  EXPECT_EQ(f.read_vector<uint8_t>("trained"), trained);
  EXPECT_EQ(f.read_vector<int64_t>("offsets"), offsets);
  EXPECT_EQ(f.read_vector<float>("empty"), empty);
  // Negative controls: the wrong element type, the wrong rank, a missing dataset.
  const std::string wrong_type = input_error([&] { f.read_vector<int64_t>("tokens"); });
  EXPECT_NE(wrong_type.find(p.string() + ": dataset 'tokens': expected Long elements, found Int"), std::string::npos) << wrong_type;
  const std::string wrong_rank = input_error([&] { f.read_vector<float>("matrix"); });
  EXPECT_NE(wrong_rank.find("dataset 'matrix': expected 1-D, found shape [2, 2]"), std::string::npos) << wrong_rank;
  const std::string missing = input_error([&] { f.read_vector<float>("nope"); });
  EXPECT_NE(missing.find(p.string() + ": missing dataset 'nope'"), std::string::npos) << missing;
}

TEST_F(Hdf5Test, AttributesOnRootAndGroups) {
  const fs::path p = dir_ / "a.h5";
  {
    auto f = hdf5::File::create(p);
    f.write_attribute("/", "step", int64_t{-7});
    f.write_attribute("/", "seed", static_cast<int64_t>(uint64_t{0xFEDCBA9876543210}));
    f.write_attribute("/", "hash", std::string("abc"));
    f.write_attribute("/", "empty", std::string());
    f.write_attribute("/", "hash", std::string("replaced"));  // an existing attribute is replaced
    f.write_tensor("optimizer/0/exp_avg", at::zeros({1}));
    f.write_attribute("optimizer/0", "name", std::string("layers.0.q_proj.lora_A"));
    EXPECT_THROW(f.write_attribute("optimizer/9", "name", std::string("x")), std::runtime_error);
    f.close();
  }
  const auto f = hdf5::File::open(p);
  EXPECT_EQ(f.read_int64_attribute("/", "step"), -7);
  EXPECT_EQ(static_cast<uint64_t>(f.read_int64_attribute("/", "seed")), uint64_t{0xFEDCBA9876543210});
  EXPECT_EQ(f.read_string_attribute("/", "hash"), "replaced");
  EXPECT_EQ(f.read_string_attribute("/", "empty"), "");
  EXPECT_EQ(f.read_string_attribute("optimizer/0", "name"), "layers.0.q_proj.lora_A");
  EXPECT_TRUE(f.has("optimizer/0/exp_avg"));
  EXPECT_TRUE(f.has("optimizer"));
  EXPECT_TRUE(f.has("/"));
  EXPECT_FALSE(f.has("optimizer/1/exp_avg")) << "a missing intermediate group is 'no', not an error";
  EXPECT_FALSE(f.has("rng_state"));
  EXPECT_TRUE(f.has_attribute("/", "step"));
  EXPECT_FALSE(f.has_attribute("/", "tokens"));
  EXPECT_FALSE(f.has_attribute("optimizer/5", "name"));
  const std::string missing = input_error([&] { f.read_int64_attribute("/", "tokens"); });
  EXPECT_EQ(missing, p.string() + ": missing attribute 'tokens'");
  const std::string missing_on_group = input_error([&] { f.read_string_attribute("optimizer/0", "kind"); });
  EXPECT_EQ(missing_on_group, p.string() + ": missing attribute 'kind' of 'optimizer/0'");
  const std::string not_int = input_error([&] { f.read_int64_attribute("/", "hash"); });
  EXPECT_NE(not_int.find("attribute 'hash': expected an integer, found string"), std::string::npos) << not_int;
  const std::string not_str = input_error([&] { f.read_string_attribute("/", "step"); });
  EXPECT_NE(not_str.find("attribute 'step': expected a string"), std::string::npos) << not_str;
}

TEST_F(Hdf5Test, CorruptTruncatedAndLyingFilesAreInputErrors) {
  const fs::path missing = dir_ / "missing.h5";
  EXPECT_EQ(input_error([&] { hdf5::File::open(missing); }), missing.string() + ": no such file");

  const fs::path garbage = dir_ / "garbage.h5";
  std::ofstream(garbage, std::ios::binary) << "not an HDF5 file at all";
  EXPECT_NE(input_error([&] { hdf5::File::open(garbage); }).find(garbage.string() + ": not an HDF5 file"), std::string::npos);

  const fs::path truncated = dir_ / "truncated.h5";
  {
    auto f = hdf5::File::create(truncated);
    f.write_tensor("big", at::ones({4096}));
    f.close();
  }
  const std::string whole = [&] {
    std::ifstream in(truncated, std::ios::binary);
    return std::string((std::istreambuf_iterator<char>(in)), {});
  }();
  fs::resize_file(truncated, fs::file_size(truncated) / 2);
  const std::string t = input_error([&] { hdf5::File::open(truncated).read_tensor("big"); });
  EXPECT_NE(t.find(truncated.string() + ": the file has "), std::string::npos) << "expected the seal's size check, got '" << t << "'";

  // One flipped byte anywhere after the seal is caught before libhdf5 reads the file (which can crash
  // on such input: docs/FUZZING.md). Negative control: the unflipped bytes open.
  const fs::path flipped = dir_ / "flipped.h5";
  std::string bytes = whole;
  bytes[bytes.size() / 2] ^= 0x10;
  std::ofstream(flipped, std::ios::binary) << bytes;
  EXPECT_NE(input_error([&] { hdf5::File::open(flipped); }).find(flipped.string() + ": contents do not match the seal's hash"),
            std::string::npos);
  std::ofstream(flipped, std::ios::binary | std::ios::trunc) << whole;
  EXPECT_TRUE(at::equal(hdf5::File::open(flipped).read_tensor("big"), at::ones({4096})));

  // Unsealed files do not reach libhdf5: a plain HDF5 file (as h5py writes it, no user block), and
  // one of ours that was never closed.
  const fs::path plain = dir_ / "plain.h5";
  { hdf5::Id f(H5Fcreate(plain.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT), H5Fclose); }
  EXPECT_NE(input_error([&] { hdf5::File::open(plain); }).find("an HDF5 file qtrain did not write"), std::string::npos);
  const fs::path unsealed = dir_ / "unsealed.h5";
  { auto f = hdf5::File::create(unsealed); }
  EXPECT_NE(input_error([&] { hdf5::File::open(unsealed); }).find("writing never finished"), std::string::npos);

  // A dataset whose shape claims more bytes than the file holds (what a corrupt header looks like):
  // refused before allocating. Made honestly with HDF5's own late allocation.
  const fs::path lying = dir_ / "lying.h5";
  {
    auto f = hdf5::File::create(lying);
    const hsize_t dims[1] = {hsize_t{1} << 40};
    hdf5::Id space(H5Screate_simple(1, dims, nullptr), H5Sclose);
    hdf5::Id dcpl(H5Pcreate(H5P_DATASET_CREATE), H5Pclose);
    H5Pset_alloc_time(dcpl.get(), H5D_ALLOC_TIME_LATE);
    hdf5::Id ds(H5Dcreate2(f.id(), "huge", H5T_IEEE_F32LE, space.get(), H5P_DEFAULT, dcpl.get(), H5P_DEFAULT), H5Dclose);
    ASSERT_TRUE(ds.valid());
    ds.reset();
    f.close();
  }
  const std::string l = input_error([&] { hdf5::File::open(lying).read_tensor("huge"); });
  EXPECT_NE(l.find(lying.string() + ": dataset 'huge': claims shape [1099511627776]"), std::string::npos) << l;
}

TEST_F(Hdf5Test, WritesNameTheFileAndDataset) {
  const fs::path p = dir_ / "w.h5";
  auto f = hdf5::File::create(p);
  try {
    f.write_tensor("x", at::zeros({2}, at::kDouble));
    FAIL() << "wrote a float64 tensor";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find(p.string() + ": dataset 'x': expected a fp32, uint8, int32 or int64 tensor, found Double"),
              std::string::npos)
        << e.what();
  }
  f.write_tensor("x", at::zeros({2}));
  try {
    f.write_tensor("x", at::zeros({2}));
    FAIL() << "wrote a dataset twice";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find(p.string() + ": cannot write dataset 'x': it exists already"), std::string::npos)
        << e.what();
  }
  EXPECT_THROW(hdf5::File::create(dir_ / "no" / "such" / "dir.h5"), std::runtime_error);
}

}  // namespace
}  // namespace qtrain
