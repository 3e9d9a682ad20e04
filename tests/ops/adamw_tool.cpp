// Test driver for tests/oracle/test_adamw_bnb.py: runs qtrain's AdamW on raw little-endian files so the
// Python oracles (bitsandbytes, torch.optim, a numpy transcription of formats.md §2.4) can compare values.
// Self-contained on purpose (no data/ dependency), like nf4_tool.
//
//   adamw_tool run DIR   DIR/manifest.txt, one "key value" per line:
//                          dtype float32|bfloat16, n N, steps S, path fast|fallback,
//                          lr, beta1, beta2, eps, weight_decay, gnorm_scale (decimal doubles; Python repr
//                          round-trips exactly through strtod).
//                        DIR/param.bin [n] of dtype, DIR/grads.bin [S, n] of dtype (one gradient per step).
//                        Runs steps 1..S from a zero state and writes param_out.bin [n] (dtype),
//                        exp_avg.bin, exp_avg_sq.bin [n] (float32), and trajectory.bin [S, n] (dtype, the
//                        param after each step).
// Exit status: 0 ok, 1 the op rejected its input (message on stderr), 2 usage or manifest error.
#include "ops/adamw.h"

#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <stdexcept>
#include <string>

namespace {

namespace fs = std::filesystem;
using qtrain::ops::AdamWParams;
using qtrain::ops::AdamWState;

// A manifest or usage problem (exit 2), as opposed to an op rejecting its input (c10::Error, exit 1).
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

at::ScalarType parse_dtype(const std::string& s) {
  if (s == "float32") return at::kFloat;
  if (s == "bfloat16") return at::kBFloat16;
  throw UsageError("unknown dtype '" + s + "' (expected float32, bfloat16)");
}

std::map<std::string, std::string> read_manifest(const fs::path& dir) {
  std::ifstream in(dir / "manifest.txt");
  if (!in) throw UsageError("cannot open " + (dir / "manifest.txt").string());
  std::map<std::string, std::string> kv;
  std::string line;
  while (std::getline(in, line)) {
    const auto sp = line.find(' ');
    if (sp == std::string::npos) continue;
    kv[line.substr(0, sp)] = line.substr(sp + 1);
  }
  return kv;
}

const std::string& need(const std::map<std::string, std::string>& kv, const std::string& key) {
  const auto it = kv.find(key);
  if (it == kv.end()) throw UsageError("manifest.txt: missing key '" + key + "'");
  return it->second;
}

double need_double(const std::map<std::string, std::string>& kv, const std::string& key) {
  const std::string& s = need(kv, key);
  size_t used = 0;
  const double v = std::stod(s, &used);
  if (used != s.size()) throw UsageError("manifest.txt: key '" + key + "' is not a number: '" + s + "'");
  return v;
}

at::Tensor read_tensor(const fs::path& file, at::ScalarType dtype, at::IntArrayRef shape) {
  at::Tensor t = at::empty(shape, at::TensorOptions().dtype(dtype));
  const auto bytes = static_cast<std::streamsize>(t.numel() * t.element_size());
  std::ifstream in(file, std::ios::binary);
  if (!in) throw UsageError("cannot open " + file.string());
  in.read(static_cast<char*>(t.data_ptr()), bytes);
  if (in.gcount() != bytes) {
    throw UsageError(file.string() + ": expected " + std::to_string(bytes) + " bytes, found " +
                     std::to_string(in.gcount()));
  }
  return t;
}

void write_tensor(const fs::path& file, const at::Tensor& t) {
  const at::Tensor c = t.cpu().contiguous();
  std::ofstream out(file, std::ios::binary);
  out.write(static_cast<const char*>(c.data_ptr()), static_cast<std::streamsize>(c.numel() * c.element_size()));
  if (!out) throw std::runtime_error("cannot write " + file.string());
}

int run(const fs::path& dir) {
  const auto kv = read_manifest(dir);
  const at::ScalarType dtype = parse_dtype(need(kv, "dtype"));
  const int64_t n = std::stoll(need(kv, "n"));
  const int64_t steps = std::stoll(need(kv, "steps"));
  const std::string& path = need(kv, "path");
  if (path != "fast" && path != "fallback") throw UsageError("unknown path '" + path + "' (expected fast, fallback)");
  AdamWParams hp;
  hp.lr = need_double(kv, "lr");
  hp.beta1 = need_double(kv, "beta1");
  hp.beta2 = need_double(kv, "beta2");
  hp.eps = need_double(kv, "eps");
  hp.weight_decay = need_double(kv, "weight_decay");
  const double gnorm_scale = need_double(kv, "gnorm_scale");

  at::Tensor p = read_tensor(dir / "param.bin", dtype, {n});
  const at::Tensor grads = read_tensor(dir / "grads.bin", dtype, {steps, n});
  at::Tensor trajectory = at::empty({steps, n}, at::TensorOptions().dtype(dtype));
  AdamWState st = qtrain::ops::make_adamw_state(p);
  for (int64_t t = 1; t <= steps; ++t) {
    const at::Tensor g = grads[t - 1];
    if (path == "fast") {
      qtrain::ops::adamw_step(p, g, st, t, hp, gnorm_scale);
    } else {
      qtrain::ops::adamw_step_fallback(p, g, st, t, hp, gnorm_scale);
    }
    trajectory[t - 1].copy_(p);
  }
  write_tensor(dir / "param_out.bin", p);
  write_tensor(dir / "exp_avg.bin", st.exp_avg);
  write_tensor(dir / "exp_avg_sq.bin", st.exp_avg_sq);
  write_tensor(dir / "trajectory.bin", trajectory);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3 || std::string(argv[1]) != "run") {
    std::cerr << "usage: adamw_tool run DIR\n";
    return 2;
  }
  try {
    return run(argv[2]);
  } catch (const UsageError& e) {
    std::cerr << "adamw_tool: " << e.what() << "\n";
    return 2;
  } catch (const std::logic_error& e) {  // std::stod / std::stoll on a malformed manifest value
    std::cerr << "adamw_tool: manifest.txt: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "adamw_tool: " << e.what() << "\n";
    return 1;
  }
}
