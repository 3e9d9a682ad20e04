// Test driver for tests/oracle/test_gptq_oracle.py: qtrain's GPTQ/RTN and the v1 packing on safetensors
// files, so a Python transcription of the reference algorithm and an independent unpacker can compare.
//
//   gptq_tool quantize IN OUT BITS GROUP SYM DESC_ACT STATIC DAMP
//       IN holds W [out, in] float32 and H [in, in] float32. Writes to OUT: gptq.codes (uint8 [out, in]),
//       gptq.scales (fp32 [groups, out]), gptq.zeros (int32), gptq.g_idx (int32), the same for rtn.*,
//       the packed v1 tensors of the GPTQ result under "layer" (layer.qweight, .qzeros, .scales, .g_idx),
//       and stats (float64 [4]: GPTQ loss, damp used, retries, hessian_error GPTQ, then RTN's) as gptq.stats.
//   gptq_tool unpack IN OUT OUT_FEATURES IN_FEATURES BITS GROUP
//       IN holds layer.qweight/.qzeros/.scales/.g_idx (v1); writes codes, scales, zeros, g_idx to OUT.
// Exit status: 0 ok, 1 rejected input (message on stderr), 2 usage error.
#include <iostream>
#include <string>

#include "data/error.h"
#include "data/io/gptq_format.h"
#include "data/io/safetensors.h"
#include "export/gptq.h"

namespace {

using namespace qtrain;

void put(std::map<std::string, at::Tensor>& out, const std::string& p, const GptqLinear& q) {
  out[p + ".codes"] = q.codes;
  out[p + ".scales"] = q.scales;
  out[p + ".zeros"] = q.zeros;
  out[p + ".g_idx"] = q.g_idx;
}

int quantize(int argc, char** argv) {
  if (argc != 10) return 2;
  auto in = safetensors::File::open(argv[2]);
  const at::Tensor W = in->tensor("W").clone(), H = in->tensor("H").clone();
  GptqSettings s;
  s.bits = std::stoi(argv[4]);
  s.group_size = std::stoll(argv[5]);
  s.sym = std::string(argv[6]) == "1";
  s.desc_act = std::string(argv[7]) == "1";
  s.static_groups = std::string(argv[8]) == "1";
  s.damp_percent = std::stod(argv[9]);
  GptqStats st;
  const GptqLinear g = gptq_quantize(W, H, s, &st);
  const GptqLinear r = rtn_quantize(W, s);
  std::map<std::string, at::Tensor> out;
  put(out, "gptq", g);
  put(out, "rtn", r);
  for (auto& [n, t] : pack_gptq_v1("layer", g)) out[n] = t;
  out["gptq.stats"] = at::tensor({st.error, st.damp_used, static_cast<double>(st.retries),
                                  hessian_error(W, g.dequantize(at::kFloat), H),
                                  hessian_error(W, r.dequantize(at::kFloat), H)},
                                 at::kDouble);
  safetensors::save(argv[3], out);
  return 0;
}

int unpack(int argc, char** argv) {
  if (argc != 8) return 2;
  auto in = safetensors::File::open(argv[2]);
  const TensorGetter get = [&](const std::string& n) { return in->contains(n) ? in->tensor(n) : at::Tensor(); };
  const GptqLinear q = unpack_gptq_v1(get, argv[2], "layer", std::stoll(argv[4]), std::stoll(argv[5]), std::stoi(argv[6]),
                                      std::stoll(argv[7]));
  std::map<std::string, at::Tensor> out;
  put(out, "q", q);
  safetensors::save(argv[3], out);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string usage = "usage: gptq_tool quantize IN OUT BITS GROUP SYM DESC_ACT STATIC DAMP | unpack IN OUT OUT_FEATURES IN_FEATURES BITS GROUP\n";
  if (argc < 2) {
    std::cerr << usage;
    return 2;
  }
  try {
    const std::string cmd = argv[1];
    const int rc = cmd == "quantize" ? quantize(argc, argv) : cmd == "unpack" ? unpack(argc, argv) : 2;
    if (rc == 2) std::cerr << usage;
    return rc;
  } catch (const std::exception& e) {
    std::cerr << "gptq_tool: " << e.what() << "\n";
    return 1;
  }
}
