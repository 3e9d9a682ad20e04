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
#include "ops/dtype_names.h"
#include "tests/ops/tool_io.h"

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

using UsageError = qtrain::test_tools::ToolUsageError;
using qtrain::test_tools::need;
using qtrain::test_tools::need_double;
using qtrain::test_tools::read_manifest;
using qtrain::test_tools::read_tensor;
using qtrain::test_tools::write_tensor;

// The AdamW parameter dtypes (bnb's 32-bit optimizer state over fp32 or bf16 parameters).
at::ScalarType parse_dtype(const std::string& s) {
  const auto t = qtrain::ops::parse_dtype(s);
  if (!t || (*t != at::kFloat && *t != at::kBFloat16))
    throw UsageError("unknown dtype '" + s + "' (expected float32, bfloat16)");
  return *t;
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
