// What every libFuzzer harness in tests/fuzz shares:
//   - a scratch directory per process (under $TMPDIR: scripts/fuzz.sh points it into build-fuzz/),
//     because the parsers read files, not buffers;
//   - the input split into several files at a separator line, so one input can carry a tokenizer.json
//     and the tokenizer_config.json beside it;
//   - the rule that turns documented errors into a normal return: a qtrain::Error (or a
//     std::runtime_error) whose message names the input (file, key or line) is the parser doing its
//     job; any other exception, or an error that does not say where, is a finding and aborts, so
//     libFuzzer records the input like a crash.
#pragma once

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <typeinfo>
#include <vector>

#include "data/error.h"

namespace qtrain::fuzz {

// Between the files of one input. Seeds are built with it (tests/fuzz/make_seeds.py).
inline constexpr std::string_view kPartSeparator = "\n#@qtrain-fuzz-part@#\n";

// Up to max_parts pieces; the last takes the rest, missing ones are empty.
inline std::vector<std::string_view> split_parts(const uint8_t* data, size_t size, size_t max_parts) {
  std::string_view rest(reinterpret_cast<const char*>(data), size);
  std::vector<std::string_view> parts;
  while (parts.size() + 1 < max_parts) {
    const size_t at = rest.find(kPartSeparator);
    if (at == std::string_view::npos) break;
    parts.push_back(rest.substr(0, at));
    rest.remove_prefix(at + kPartSeparator.size());
  }
  parts.push_back(rest);
  parts.resize(max_parts);
  return parts;
}

inline const std::filesystem::path& scratch_dir() {
  static const std::filesystem::path dir = [] {
    auto d = std::filesystem::temp_directory_path() / ("qtrain-fuzz-" + std::to_string(::getpid()));
    std::filesystem::create_directories(d);
    return d;
  }();
  return dir;
}

// A fresh, empty subdirectory of the scratch directory (the parsers look files up by name).
inline std::filesystem::path fresh_dir(const std::string& name) {
  const auto d = scratch_dir() / name;
  std::filesystem::remove_all(d);
  std::filesystem::create_directories(d);
  return d;
}

inline void write_file(const std::filesystem::path& p, std::string_view bytes) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out) {
    std::fprintf(stderr, "fuzz harness: cannot write %s\n", p.c_str());
    std::abort();
  }
}

// The harnesses whose seeds must come from qtrain's own writers (HDF5 files): with
// QTRAIN_FUZZ_MAKE_SEEDS=DIR the binary writes them there through `make` and exits (scripts/fuzz.sh).
// Call from LLVMFuzzerInitialize.
inline int make_seeds_if_asked(void (*make)(const std::filesystem::path& dir)) {
  if (const char* dir = std::getenv("QTRAIN_FUZZ_MAKE_SEEDS")) {
    make(dir);
    std::exit(0);
  }
  return 0;
}

[[noreturn]] inline void finding(const char* what, const std::string& type, const std::string& message) {
  std::fprintf(stderr, "\n==qtrain-fuzz== %s\n  exception type: %s\n  message: %s\n", what, type.c_str(), message.c_str());
  std::abort();
}

// Runs fn. Returns true when it finished, false when it threw a qtrain::Error or std::runtime_error
// whose message contains one of `names` (the file, or --set); anything else aborts (see the top).
template <class F>
bool expect_clean_errors(const std::vector<std::string>& names, F&& fn) {
  auto names_input = [&](const std::string& msg) {
    for (const auto& n : names)
      if (msg.find(n) != std::string::npos) return true;
    return false;
  };
  try {
    fn();
    return true;
  } catch (const Error& e) {
    if (!names_input(e.what())) finding("error message does not name the input", typeid(e).name(), e.what());
  } catch (const std::runtime_error& e) {
    if (!names_input(e.what())) finding("runtime_error does not name the input", typeid(e).name(), e.what());
  } catch (const std::exception& e) {
    finding("undocumented exception escaped the parser", typeid(e).name(), e.what());
  } catch (...) {
    finding("non-std exception escaped the parser", "?", "?");
  }
  return false;
}

}  // namespace qtrain::fuzz
