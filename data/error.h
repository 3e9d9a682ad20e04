// Errors that reach the user. Each names what was wrong and where (file, key, tensor, line) and
// carries the process exit code the CLI returns (documented in README.md):
//   0 ok, 1 any other failure, 2 usage or config error (command line, recipe), 3 bad input data
//   (a model, tokenizer or dataset file that is malformed or unsupported).
#pragma once

#include <stdexcept>
#include <string>

namespace qtrain {

enum class ExitCode : int { kOk = 0, kFailure = 1, kUsage = 2, kBadInput = 3 };

class Error : public std::runtime_error {
 public:
  Error(ExitCode code, const std::string& what) : std::runtime_error(what), code_(code) {}
  ExitCode code() const { return code_; }

 private:
  ExitCode code_;
};

// The command line or a recipe asks for something impossible or unknown.
class UsageError : public Error {
 public:
  explicit UsageError(const std::string& what) : Error(ExitCode::kUsage, what) {}
};

// An input file (checkpoint, config.json, tokenizer, dataset) is malformed or unsupported.
class InputError : public Error {
 public:
  explicit InputError(const std::string& what) : Error(ExitCode::kBadInput, what) {}
};

}  // namespace qtrain
