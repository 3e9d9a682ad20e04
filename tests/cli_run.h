// Runs the qtrain executable (QTRAIN_BINARY) with arguments, for the CLI tests: its exit code and
// what it printed (stdout and stderr together, or apart).
#pragma once

#include <sys/wait.h>

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

namespace qtrain::test_tools {

struct CliRun {
  int code = -1;
  std::string output;  // stdout, with stderr too unless split
  std::string err;     // stderr when split
};

// `args` go through the shell as written. split_stderr: stderr apart in `err` (through a temporary file).
inline CliRun run_qtrain(const std::string& args, bool split_stderr = false) {
  const std::filesystem::path err_file = std::filesystem::temp_directory_path() /
                                         ("qtrain-cli-stderr-" + std::to_string(::getpid()) + "-" + std::to_string(::rand()));
  const std::string cmd = std::string(QTRAIN_BINARY) + " " + args + (split_stderr ? " 2>" + err_file.string() : " 2>&1");
  CliRun r;
  FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) return r;
  char buf[4096];
  std::size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) r.output.append(buf, n);
  const int status = ::pclose(p);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  if (split_stderr) {
    std::ifstream e(err_file);
    r.err.assign(std::istreambuf_iterator<char>(e), {});
    std::filesystem::remove(err_file);
  }
  return r;
}

}  // namespace qtrain::test_tools
