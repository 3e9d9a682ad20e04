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
//                        Optional "bits 8": 8-bit blockwise state (ops/adamw_fused.h); path fast|reference;
//                        writes state1.bin, state2.bin [n] (uint8), absmax1.bin, absmax2.bin [ceil(n/256)]
//                        (float32) instead of exp_avg*.bin. Optional "chunks K" (8-bit, fast): the param is cut
//                        into K segments at block boundaries and stepped in one call (same bits expected).
// Exit status: 0 ok, 1 the op rejected its input (message on stderr), 2 usage or manifest error.
#include "ops/adamw.h"
#include "ops/adamw_fused.h"
#include "ops/adamw8bit_math.h"
#include "ops/dtype_names.h"
#include "tests/ops/tool_io.h"

#include <filesystem>
#include <fstream>
#include <iostream>
#include <algorithm>
#include <map>
#include <vector>
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


// 8-bit state: the per-tensor API (path fast), the scalar reference (path reference), or the fused call over
// `chunks` segments of the one param.
int run8(const fs::path& dir, const std::map<std::string, std::string>& kv, at::Tensor p, const at::Tensor& grads,
         const AdamWParams& hp, double gnorm_scale, const std::string& path, int64_t chunks) {
  namespace ops = qtrain::ops;
  const int64_t steps = grads.size(0);
  const int64_t n = p.numel();
  at::Tensor trajectory = at::empty({steps, n}, p.options());
  ops::AdamW8bitState st = ops::make_adamw8bit_state(p);
  for (int64_t t = 1; t <= steps; ++t) {
    const at::Tensor g = grads[t - 1].contiguous();
    if (path == "fast" && chunks <= 1) {
      ops::adamw8bit_step(p, g, st, t, hp, gnorm_scale);
    } else {
      const auto s = ops::adamw_step_scalars(hp, t, gnorm_scale);
      const int64_t blocks = (n + 255) / 256;
      const int64_t per = (blocks + chunks - 1) / chunks;
      std::vector<ops::AdamWSegment> segs;
      const int64_t esize = p.element_size();
      for (int64_t b0 = 0; b0 < blocks; b0 += per) {
        const int64_t e0 = b0 * 256;
        ops::AdamWSegment seg;
        seg.n = std::min(n, (b0 + per) * 256) - e0;
        seg.p = static_cast<char*>(p.data_ptr()) + e0 * esize;
        seg.g = static_cast<const char*>(g.data_ptr()) + e0 * esize;
        seg.s1 = st.state1.data_ptr<uint8_t>() + e0;
        seg.s2 = st.state2.data_ptr<uint8_t>() + e0;
        seg.absmax1 = st.absmax1.data_ptr<float>() + b0;
        seg.absmax2 = st.absmax2.data_ptr<float>() + b0;
        segs.push_back(seg);
      }
      if (path == "reference") {
        for (const auto& seg : segs) {
          if (p.scalar_type() == at::kFloat)
            ops::adamw_fused_cpu::step8_reference<float>(seg, st.qmap1.data_ptr<float>(), st.qmap2.data_ptr<float>(), s);
          else
            ops::adamw_fused_cpu::step8_reference<c10::BFloat16>(seg, st.qmap1.data_ptr<float>(),
                                                                 st.qmap2.data_ptr<float>(), s);
        }
      } else {
        ops::adamw_fused_step(ops::AdamWFormat::kBlockwise8bit, segs, p.scalar_type(), p.device(), s, st.qmap1,
                              st.qmap2);
      }
    }
    trajectory[t - 1].copy_(p);
  }
  (void)kv;
  write_tensor(dir / "param_out.bin", p);
  write_tensor(dir / "state1.bin", st.state1);
  write_tensor(dir / "state2.bin", st.state2);
  write_tensor(dir / "absmax1.bin", st.absmax1);
  write_tensor(dir / "absmax2.bin", st.absmax2);
  write_tensor(dir / "trajectory.bin", trajectory);
  return 0;
}

int run(const fs::path& dir) {
  const auto kv = read_manifest(dir);
  const at::ScalarType dtype = parse_dtype(need(kv, "dtype"));
  const int64_t n = std::stoll(need(kv, "n"));
  const int64_t steps = std::stoll(need(kv, "steps"));
  const std::string& path = need(kv, "path");
  const int64_t bits = kv.count("bits") ? std::stoll(kv.at("bits")) : 32;
  if (bits != 32 && bits != 8) throw UsageError("bits must be 32 or 8");
  if (bits == 32 && path != "fast" && path != "fallback")
    throw UsageError("unknown path '" + path + "' (expected fast, fallback)");
  if (bits == 8 && path != "fast" && path != "reference")
    throw UsageError("unknown path '" + path + "' (expected fast, reference)");
  const int64_t chunks = kv.count("chunks") ? std::stoll(kv.at("chunks")) : 1;
  AdamWParams hp;
  hp.lr = need_double(kv, "lr");
  hp.beta1 = need_double(kv, "beta1");
  hp.beta2 = need_double(kv, "beta2");
  hp.eps = need_double(kv, "eps");
  hp.weight_decay = need_double(kv, "weight_decay");
  const double gnorm_scale = need_double(kv, "gnorm_scale");

  at::Tensor p = read_tensor(dir / "param.bin", dtype, {n});
  const at::Tensor grads = read_tensor(dir / "grads.bin", dtype, {steps, n});
  if (bits == 8) return run8(dir, kv, p, grads, hp, gnorm_scale, path, chunks);
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
