// Runs the qtrain executable (QTRAIN_BINARY) with arguments, for the CLI tests: its exit code and
// everything it printed (stdout and stderr together).
#pragma once

#include <sys/wait.h>

#include <cstdio>
#include <string>

namespace qtrain::test_tools {

struct CliRun {
  int code = -1;
  std::string output;  // stdout + stderr
};

inline CliRun run_qtrain(const std::string& args) {
  const std::string cmd = std::string(QTRAIN_BINARY) + " " + args + " 2>&1";
  CliRun r;
  FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) return r;
  char buf[4096];
  std::size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) r.output.append(buf, n);
  const int status = ::pclose(p);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
}

}  // namespace qtrain::test_tools
