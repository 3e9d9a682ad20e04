// What the oracle drivers (nf4_tool, adamw_tool) share: a "key value" manifest and raw little-endian
// tensor files, so the Python oracles can exchange data without any format library on either side.
#pragma once

#include <ATen/ATen.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <stdexcept>
#include <string>

namespace qtrain::test_tools {

// A manifest or usage problem (the tools exit 2), as opposed to an op rejecting its input (exit 1).
struct ToolUsageError : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

inline std::map<std::string, std::string> read_manifest(const std::filesystem::path& dir) {
  std::ifstream in(dir / "manifest.txt");
  if (!in) throw ToolUsageError("cannot open " + (dir / "manifest.txt").string());
  std::map<std::string, std::string> kv;
  for (std::string line; std::getline(in, line);) {
    const auto sp = line.find(' ');
    if (sp != std::string::npos) kv[line.substr(0, sp)] = line.substr(sp + 1);
  }
  return kv;
}

inline const std::string& need(const std::map<std::string, std::string>& kv, const std::string& key) {
  const auto it = kv.find(key);
  if (it == kv.end()) throw ToolUsageError("manifest.txt: missing key '" + key + "'");
  return it->second;
}

inline double need_double(const std::map<std::string, std::string>& kv, const std::string& key) {
  const std::string& s = need(kv, key);
  std::size_t used = 0;
  const double v = std::stod(s, &used);
  if (used != s.size()) throw ToolUsageError("manifest.txt: key '" + key + "' is not a number: '" + s + "'");
  return v;
}

// Reads exactly numel(shape) elements of `dtype`; a short or missing file is a usage error naming it.
inline at::Tensor read_tensor(const std::filesystem::path& file, at::ScalarType dtype, at::IntArrayRef shape) {
  at::Tensor t = at::empty(shape, at::TensorOptions().dtype(dtype));
  const auto bytes = static_cast<std::streamsize>(t.numel() * t.element_size());
  std::ifstream in(file, std::ios::binary);
  if (!in) throw ToolUsageError("cannot open " + file.string());
  in.read(static_cast<char*>(t.data_ptr()), bytes);
  if (in.gcount() != bytes)
    throw ToolUsageError(file.string() + ": expected " + std::to_string(bytes) + " bytes, found " + std::to_string(in.gcount()));
  return t;
}

inline void write_tensor(const std::filesystem::path& file, const at::Tensor& t) {
  const at::Tensor c = t.cpu().contiguous();
  std::ofstream out(file, std::ios::binary);
  out.write(static_cast<const char*>(c.data_ptr()), static_cast<std::streamsize>(c.numel() * c.element_size()));
  if (!out) throw std::runtime_error("cannot write " + file.string());
}

}  // namespace qtrain::test_tools
