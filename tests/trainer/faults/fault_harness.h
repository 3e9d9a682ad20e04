// What the fault tests share: a scratch directory, the real qtrain binary run as a child (exit code or
// signal, output), the shared data location, and a snapshot of a directory's files to prove that a
// failed run lost nothing that was already on disk.
#pragma once

#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <string>

#include "tests/scratch_dir.h"

namespace qtrain::faults {
namespace fs = std::filesystem;

using ScratchDir = test_tools::ScratchDir;  // a fresh temporary directory, removed with its contents

// ../shared/data, or QTRAIN_SHARED_DATA when set (a test run can point it at a missing directory to
// check that the tests skip).
inline fs::path shared_data() {
  if (const char* e = std::getenv("QTRAIN_SHARED_DATA"); e && *e) return e;
  return QTRAIN_SHARED_DATA;
}

inline std::string read_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), {});
}

inline void write_bytes(const fs::path& p, const std::string& bytes) {
  std::ofstream(p, std::ios::binary | std::ios::trunc) << bytes;
}

inline std::string quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

// How a child ended: an exit code, or the signal that killed it.
struct Outcome {
  int exit_code = -1;  // -1 when a signal ended it
  int signal = 0;
  std::string output;  // stdout + stderr
  std::string describe() const {
    return signal ? "killed by signal " + std::to_string(signal) + " (" + strsignal(signal) + ")"
                  : "exit code " + std::to_string(exit_code);
  }
};

inline Outcome outcome_of(int status) {
  Outcome o;
  if (WIFEXITED(status)) o.exit_code = WEXITSTATUS(status);
  if (WIFSIGNALED(status)) o.signal = WTERMSIG(status);
  return o;
}

// The binary under test: the build's, or QTRAIN_BINARY when set (a copy that a concurrent build
// cannot relink mid-test).
inline std::string qtrain_binary() {
  if (const char* e = std::getenv("QTRAIN_BINARY"); e && *e) return e;
  return QTRAIN_BINARY;
}

// Starts `sh -c 'cd CWD && PREFIX exec qtrain ARGS > LOG 2>&1'` and returns the pid, which is qtrain's
// own (exec), so a signal sent to it reaches qtrain. `prefix` may set limits (ulimit, trap). One
// intra-op thread: these models are tiny, ctest runs tests side by side, and OpenMP threads spinning
// on a busy machine make such a run ten times slower.
inline pid_t spawn_qtrain(const fs::path& cwd, const std::string& args, const fs::path& log, const std::string& prefix = "") {
  const std::string cmd = "cd " + quote(cwd.string()) + " && export OMP_NUM_THREADS=1 && " + prefix + " exec " + qtrain_binary() +
                          " " + args + " > " + quote(log.string()) + " 2>&1";
  pid_t pid = 0;
  const char* argv[] = {"/bin/sh", "-c", cmd.c_str(), nullptr};
  if (posix_spawn(&pid, "/bin/sh", nullptr, nullptr, const_cast<char* const*>(argv), environ) != 0) return -1;
  return pid;
}

// Runs qtrain to the end.
inline Outcome run_qtrain(const fs::path& cwd, const std::string& args, const std::string& prefix = "") {
  const fs::path log = cwd / ".qtrain-output.txt";
  const pid_t pid = spawn_qtrain(cwd, args, log, prefix);
  int status = 0;
  if (pid <= 0 || waitpid(pid, &status, 0) != pid) return {};
  Outcome o = outcome_of(status);
  o.output = read_bytes(log);
  fs::remove(log);
  return o;
}

// Every regular file under `dir` (relative path → bytes), but the run directory's lock file: each run
// writes its pid into it, by design.
inline std::map<std::string, std::string> snapshot(const fs::path& dir) {
  std::map<std::string, std::string> files;
  if (!fs::exists(dir)) return files;
  for (const auto& e : fs::recursive_directory_iterator(dir))
    if (e.is_regular_file() && e.path().filename() != ".qtrain.lock")
      files[fs::relative(e.path(), dir).string()] = read_bytes(e.path());
  return files;
}

// The files of `before` that are missing or changed in `after`, one per line ("" when none).
inline std::string lost_files(const std::map<std::string, std::string>& before, const std::map<std::string, std::string>& after) {
  std::string lost;
  for (const auto& [name, bytes] : before) {
    auto it = after.find(name);
    if (it == after.end()) lost += "  " + name + ": deleted\n";
    else if (it->second != bytes) lost += "  " + name + ": changed\n";
  }
  return lost;
}

}  // namespace qtrain::faults
