// Test driver for tests/oracle/test_gguf.py: qtrain's ggml block quantizers on raw float32 files, and the
// GGUF export of a model directory, so gguf-py (GGUFReader, gguf.quants) can check both.
//
//   gguf_tool quantize TYPE ROWS COLS IN OUT      IN: ROWS·COLS float32 (little-endian); OUT: the blocks
//   gguf_tool dequantize TYPE ROWS COLS IN OUT    IN: blocks; OUT: ROWS·COLS float32
//   gguf_tool export MODEL_DIR OUT.gguf f16|q8_0|q4_k_m
//       loads MODEL_DIR dense in float32 (a merged model is dense already) and writes it with write_gguf;
//       prints "name type" per tensor.
// TYPE: F32 F16 Q8_0 Q5_0 Q5_1 Q4_K Q5_K Q6_K. Exit status: 0 ok, 1 rejected input (message on stderr),
// 2 usage error.
#include <fstream>
#include <iostream>
#include <iterator>
#include <map>
#include <string>
#include <vector>

#include "data/error.h"
#include "export/gguf_export.h"
#include "export/gguf_quants.h"

namespace {

using namespace qtrain;

gguf::GgmlType parse_type(const std::string& s) {
  static const std::map<std::string, gguf::GgmlType> kTypes = {
      {"F32", gguf::GgmlType::kF32},   {"F16", gguf::GgmlType::kF16},   {"Q8_0", gguf::GgmlType::kQ8_0},
      {"Q5_0", gguf::GgmlType::kQ5_0}, {"Q5_1", gguf::GgmlType::kQ5_1}, {"Q4_K", gguf::GgmlType::kQ4_K},
      {"Q5_K", gguf::GgmlType::kQ5_K}, {"Q6_K", gguf::GgmlType::kQ6_K}};
  auto it = kTypes.find(s);
  if (it == kTypes.end()) throw UsageError("unknown type " + s);
  return it->second;
}

std::vector<uint8_t> slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw InputError("cannot open " + path);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

void spit(const std::string& path, const void* data, std::size_t n) {
  std::ofstream f(path, std::ios::binary);
  f.write(static_cast<const char*>(data), static_cast<std::streamsize>(n));
  if (!f) throw std::runtime_error("cannot write " + path);
}

int run(int argc, char** argv) {
  if (argc < 2) return 2;
  const std::string cmd = argv[1];
  if ((cmd == "quantize" || cmd == "dequantize") && argc == 7) {
    const gguf::GgmlType t = parse_type(argv[2]);
    const int64_t rows = std::stoll(argv[3]), cols = std::stoll(argv[4]);
    const std::vector<uint8_t> in = slurp(argv[5]);
    if (cmd == "quantize") {
      if (in.size() != static_cast<std::size_t>(rows * cols) * 4) throw InputError("input size does not match ROWS·COLS");
      const std::vector<uint8_t> q = gguf::quantize_rows(t, reinterpret_cast<const float*>(in.data()), rows, cols);
      spit(argv[6], q.data(), q.size());
    } else {
      if (in.size() != gguf::row_bytes(t, cols) * static_cast<uint64_t>(rows)) throw InputError("input size does not match");
      std::vector<float> out(static_cast<std::size_t>(rows * cols));
      gguf::dequantize_rows(t, in.data(), rows, cols, out.data());
      spit(argv[6], out.data(), out.size() * 4);
    }
    return 0;
  }
  if (cmd == "export" && argc == 5) {
    const LlamaModel m = LlamaModel::load(argv[2], LoadOptions{});
    const GgufResult r = write_gguf(argv[3], m, argv[2], parse_gguf_type(argv[4]));
    for (const auto& [name, type] : r.tensor_types) std::cout << name << ' ' << type << '\n';
    std::cout << "bytes " << r.bytes << '\n';
    return 0;
  }
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const int rc = run(argc, argv);
    if (rc == 2) std::cerr << "usage: see tests/export/gguf_tool.cpp\n";
    return rc;
  } catch (const UsageError& e) {
    std::cerr << e.what() << '\n';
    return 2;
  } catch (const std::exception& e) {
    std::cerr << e.what() << '\n';
    return 1;
  }
}
