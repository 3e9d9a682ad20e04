// Test driver for tests/oracle/test_nf4_bnb.py: runs qtrain's NF4/FP4 ops on raw little-endian files so the
// bitsandbytes oracle can compare bytes. Self-contained on purpose (no data/ dependency).
//
//   nf4_tool quantize DIR    DIR/manifest.txt: "dtype D", "shape d0 d1 ...", "type nf4|fp4", "blocksize B",
//                            "double_quant 0|1", "out_dtype D"; DIR/input.bin holds the tensor.
//                            Writes packed.bin, absmax.bin, nested_absmax.bin, nested_map.bin, offset.txt
//                            (float32 bits as an unsigned integer) and dequant.bin (dequantize of the result).
//   nf4_tool dequantize DIR  Same manifest; reads packed.bin, absmax.bin (+ nested_absmax.bin, nested_map.bin,
//                            offset.txt when double_quant) and writes dequant.bin.
//   nf4_tool dynmap DIR      Writes nested_map.bin (signed_dynamic_map()).
//   nf4_tool bench DIR       As dequantize, repeated "reps" times (manifest key); prints the best time in
//                            seconds of one dequantize (used by scripts/bench/nf4_dequant_cpu.py).
// Exit status: 0 ok, 1 an op rejected its input (message on stderr), 2 usage error.
#include "ops/dtype_names.h"
#include "ops/nf4.h"
#include "tests/ops/tool_io.h"

#include <algorithm>
#include <bit>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

namespace fs = std::filesystem;
using qtrain::ops::QuantParams;
using qtrain::ops::QuantState;
using qtrain::ops::QuantType;
using qtrain::test_tools::need;
using qtrain::test_tools::read_manifest;
using qtrain::test_tools::read_tensor;
using qtrain::test_tools::write_tensor;

at::ScalarType parse_dtype(const std::string& s) {
  if (const auto t = qtrain::ops::parse_dtype(s)) return *t;
  throw std::invalid_argument("unknown dtype '" + s + "' (expected " + std::string(qtrain::ops::kDtypeNameList) + ")");
}

QuantType parse_type(const std::string& s) {
  if (s == "nf4") return QuantType::kNF4;
  if (s == "fp4") return QuantType::kFP4;
  throw std::invalid_argument("unknown type '" + s + "' (expected nf4, fp4)");
}


struct Job {
  at::ScalarType dtype;
  std::vector<int64_t> shape;
  QuantParams params;
  at::ScalarType out_dtype;
};

Job parse_job(const std::map<std::string, std::string>& kv) {
  Job j;
  j.dtype = parse_dtype(need(kv, "dtype"));
  std::istringstream shape(need(kv, "shape"));
  for (int64_t d; shape >> d;) j.shape.push_back(d);
  j.params.type = parse_type(need(kv, "type"));
  j.params.blocksize = std::stoll(need(kv, "blocksize"));
  j.params.double_quant = need(kv, "double_quant") == "1";
  j.out_dtype = parse_dtype(need(kv, "out_dtype"));
  return j;
}

int64_t numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (const int64_t d : shape) n *= d;
  return n;
}

void write_state(const fs::path& dir, const QuantState& s) {
  write_tensor(dir / "packed.bin", s.packed);
  write_tensor(dir / "absmax.bin", s.absmax);
  if (s.double_quant()) {
    write_tensor(dir / "nested_absmax.bin", s.nested_absmax);
    write_tensor(dir / "nested_map.bin", s.nested_quant_map);
    std::ofstream(dir / "offset.txt") << std::bit_cast<uint32_t>(s.nested_offset) << "\n";
  }
}

QuantState read_state(const fs::path& dir, const Job& j) {
  QuantState s;
  const int64_t n = numel(j.shape);
  const int64_t nb = (n + j.params.blocksize - 1) / j.params.blocksize;
  s.shape = j.shape;
  s.dtype = j.dtype;
  s.type = j.params.type;
  s.blocksize = j.params.blocksize;
  s.quant_map = qtrain::ops::code_table(j.params.type);
  s.packed = read_tensor(dir / "packed.bin", at::kByte, {(n + 1) / 2});
  if (j.params.double_quant) {
    s.absmax = read_tensor(dir / "absmax.bin", at::kByte, {nb});
    s.nested_absmax = read_tensor(dir / "nested_absmax.bin", at::kFloat, {(nb + 255) / 256});
    s.nested_quant_map = read_tensor(dir / "nested_map.bin", at::kFloat, {256});
    uint32_t bits = 0;
    std::ifstream(dir / "offset.txt") >> bits;
    s.nested_offset = std::bit_cast<float>(bits);
  } else {
    s.absmax = read_tensor(dir / "absmax.bin", at::kFloat, {nb});
  }
  return s;
}

int run(const std::string& verb, const fs::path& dir) {
  if (verb == "dynmap") {
    write_tensor(dir / "nested_map.bin", qtrain::ops::signed_dynamic_map());
    return 0;
  }
  const Job j = parse_job(read_manifest(dir));
  if (verb == "quantize") {
    const at::Tensor w = read_tensor(dir / "input.bin", j.dtype, j.shape);
    const QuantState s = qtrain::ops::quantize_4bit(w, j.params);
    write_state(dir, s);
    write_tensor(dir / "dequant.bin", qtrain::ops::dequantize_4bit(s, j.out_dtype));
    return 0;
  }
  if (verb == "dequantize") {
    const QuantState s = read_state(dir, j);
    write_tensor(dir / "dequant.bin", qtrain::ops::dequantize_4bit(s, j.out_dtype));
    return 0;
  }
  if (verb == "bench") {
    const QuantState s = read_state(dir, j);
    const int reps = std::stoi(need(read_manifest(dir), "reps"));
    // "reuse_out 1": dequantize into one preallocated output (dequantize_4bit_out), the peer of bnb's out=.
    const std::map<std::string, std::string> manifest = read_manifest(dir);
    const bool reuse = manifest.count("reuse_out") != 0 && manifest.at("reuse_out") == "1";
    at::Tensor reused = at::empty(s.shape, at::TensorOptions().dtype(j.out_dtype));
    double best = 1e30;
    for (int r = 0; r < reps; ++r) {
      const auto t0 = std::chrono::steady_clock::now();
      const at::Tensor out = reuse ? (qtrain::ops::dequantize_4bit_out(s, reused), reused)
                                   : qtrain::ops::dequantize_4bit(s, j.out_dtype);
      const auto t1 = std::chrono::steady_clock::now();
      best = std::min(best, std::chrono::duration<double>(t1 - t0).count());
    }
    std::cout << best << "\n";
    return 0;
  }
  std::cerr << "nf4_tool: unknown verb '" << verb << "' (expected quantize, dequantize, dynmap, bench)\n";
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: nf4_tool quantize|dequantize|dynmap DIR\n";
    return 2;
  }
  try {
    return run(argv[1], argv[2]);
  } catch (const std::invalid_argument& e) {
    std::cerr << "nf4_tool: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "nf4_tool: " << e.what() << "\n";
    return 1;
  }
}
