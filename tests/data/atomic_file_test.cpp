// Atomic files and directories: the target appears only on commit, with the new contents; an abandoned
// writer leaves the old target and no temporary; a directory replaces an existing one by moving it aside
// (so nothing named <target>.old.* or <target>.tmp.* is left); an HDF5-style writer that creates the file
// by name publishes through AtomicFilePath.
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>

#include "data/io/atomic_file.h"
#include "tests/scratch_dir.h"

namespace qtrain {
namespace {
namespace fs = std::filesystem;

class AtomicFileTest : public ::testing::Test {
 protected:
  static std::string read(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    return std::string((std::istreambuf_iterator<char>(in)), {});
  }
  // Every name in dir_, sorted: temporaries would show up here.
  std::vector<std::string> names() const {
    std::vector<std::string> out;
    for (const auto& e : fs::directory_iterator(dir_)) out.push_back(e.path().filename().string());
    std::sort(out.begin(), out.end());
    return out;
  }
  test_tools::ScratchDir scratch_{"atomic"};
  const fs::path& dir_ = scratch_.path;
};

TEST_F(AtomicFileTest, FileAppearsOnlyOnCommit) {
  const fs::path f = dir_ / "a.txt";
  {
    AtomicFile w(f);
    w.write("new", 3);
    EXPECT_FALSE(fs::exists(f)) << "visible before commit";
    EXPECT_TRUE(fs::exists(w.temp_path()));
    w.commit();
  }
  EXPECT_EQ(read(f), "new");
  EXPECT_EQ(names(), std::vector<std::string>{"a.txt"});
}

TEST_F(AtomicFileTest, AbandonedFileLeavesTheOldOne) {
  const fs::path f = dir_ / "a.txt";
  write_file_atomic(f, "old");
  try {
    AtomicFile w(f);
    w.write("partial", 7);
    throw std::runtime_error("crash");
  } catch (const std::runtime_error&) {
  }
  EXPECT_EQ(read(f), "old");
  EXPECT_EQ(names(), std::vector<std::string>{"a.txt"});
}

TEST_F(AtomicFileTest, FilePathPublishesWhatALibraryWroteByName) {
  const fs::path f = dir_ / "state.h5";
  write_file_atomic(f, "old");
  {
    AtomicFilePath w(f);
    EXPECT_FALSE(fs::exists(w.path())) << "nothing is created before the library writes";
    std::ofstream(w.path(), std::ios::binary) << "abandoned";
  }
  EXPECT_EQ(read(f), "old");
  EXPECT_EQ(names(), std::vector<std::string>{"state.h5"});
  {
    AtomicFilePath w(f);
    std::ofstream(w.path(), std::ios::binary) << "new";
    w.commit();
    EXPECT_THROW(w.commit(), std::logic_error);
  }
  EXPECT_EQ(read(f), "new");
  EXPECT_EQ(names(), std::vector<std::string>{"state.h5"});
}

TEST_F(AtomicFileTest, PublishingAMissingFileNamesIt) {
  AtomicFilePath w(dir_ / "never.h5");
  try {
    w.commit();
    FAIL() << "committed a file that was never written";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find(w.path().string()), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(dir_ / "never.h5"));
}

TEST_F(AtomicFileTest, DirectoryReplacesTheOldOneWhole) {
  const fs::path d = dir_ / "adapter";
  fs::create_directories(d / "sub");
  write_file_atomic(d / "old.txt", "old");
  {
    AtomicDirectory w(d);
    EXPECT_EQ(w.target(), d);
    fs::create_directories(w.path() / "nested");
    write_file_atomic(w.path() / "nested" / "x.txt", "x");
    write_file_atomic(w.path() / "new.txt", "new");
    EXPECT_TRUE(fs::exists(d / "old.txt")) << "the old directory must stay until commit";
    w.commit();
  }
  EXPECT_FALSE(fs::exists(d / "old.txt"));
  EXPECT_FALSE(fs::exists(d / "sub"));
  EXPECT_EQ(read(d / "new.txt"), "new");
  EXPECT_EQ(read(d / "nested" / "x.txt"), "x");
  EXPECT_EQ(names(), std::vector<std::string>{"adapter"}) << "an .old or .tmp sibling was left";
}

TEST_F(AtomicFileTest, AbandonedDirectoryLeavesTheOldOne) {
  const fs::path d = dir_ / "out";
  fs::create_directories(d);
  write_file_atomic(d / "keep.txt", "keep");
  {
    AtomicDirectory w(d);
    write_file_atomic(w.path() / "half.txt", "half");
  }
  EXPECT_EQ(read(d / "keep.txt"), "keep");
  EXPECT_FALSE(fs::exists(d / "half.txt"));
  EXPECT_EQ(names(), std::vector<std::string>{"out"});
}

TEST_F(AtomicFileTest, DirectoryCreatesMissingParentsAndAcceptsATrailingSlash) {
  const fs::path d = dir_ / "a" / "b" / "c";
  AtomicDirectory w(d.string() + "/");
  EXPECT_EQ(w.target(), d);
  write_file_atomic(w.path() / "f", "f");
  w.commit();
  EXPECT_EQ(read(d / "f"), "f");
}

TEST_F(AtomicFileTest, AFileThatCannotBeCreatedIsReportedByName) {
  // A missing directory fails for every user (root ignores permissions, so a read-only one would not).
  const fs::path f = dir_ / "no-such-dir" / "a.txt";
  try {
    AtomicFile w(f);
    FAIL() << "created a file in a missing directory";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find(f.string() + ".tmp."), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("cannot create"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace qtrain
