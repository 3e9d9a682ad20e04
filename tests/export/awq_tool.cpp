// Test driver for tests/oracle/test_awq_oracle.py: qtrain's AWQ search, quantizer and GEMM packing on
// safetensors files, so AutoAWQ's own code (and an independent unpacker) can compare.
//
//   awq_tool layer MODEL_DIR IN OUT LAYER GROUP ZERO_POINT DUO CLIP
//       IN holds h.0 .. h.{n-1}: the float32 inputs [1, len, hidden] of decoder layer LAYER. Loads the
//       model (float32, CPU), runs awq_quantize_layer on them (every position counted) and writes to OUT:
//       scales.attn_in / .v_o (MHA only) / .mlp_in / .up_down, ratios (float64 [mappings]), losses
//       (float64 [mappings, n_grid]), clip.<path> (max_val [out, groups]), q.<path>.codes/.scales/.zeros,
//       the GEMM tensors <path>.qweight/.qzeros/.scales, input_norm / post_attention_norm (folded),
//       out.k (the quantized layer's outputs), stats (float64 [7, 2]: hessian error AWQ, RTN per linear).
//   awq_tool quantize IN OUT GROUP ZERO_POINT
//       IN holds W [out, in]. Writes codes/scales/zeros (awq_quantize), fake (awq_fake_quantize, fp32
//       scales) and the GEMM tensors under "layer" (layer.qweight/.qzeros/.scales).
//   awq_tool unpack IN OUT OUT_FEATURES IN_FEATURES GROUP
//       IN holds layer.qweight/.qzeros/.scales; writes codes, scales, zeros to OUT.
//   awq_tool clip IN OUT GROUP
//       IN holds W [out, in] and X [tokens, in]; writes max_val (awq_search_clip).
// Exit status: 0 ok, 1 rejected input (message on stderr), 2 usage error.
#include <iostream>
#include <string>

#include "data/error.h"
#include "data/io/awq_format.h"
#include "data/io/safetensors.h"
#include "export/awq.h"
#include "export/awq_model.h"
#include "trainer/model/model.h"

namespace {

using namespace qtrain;

AwqSettings settings(const char* group, const char* zero_point) {
  AwqSettings s;
  s.group_size = std::stoll(group);
  s.zero_point = std::string(zero_point) == "1";
  return s;
}

int layer(int argc, char** argv) {
  if (argc != 10) return 2;
  LoadOptions opts;
  opts.dtype = at::kFloat;
  LlamaModel model = LlamaModel::load(argv[2], opts);
  auto in = safetensors::File::open(argv[3]);
  const int64_t li = std::stoll(argv[5]);
  AwqSettings s = settings(argv[6], argv[7]);
  s.duo_scaling = std::string(argv[8]) == "1";
  s.apply_clip = std::string(argv[9]) == "1";
  std::vector<at::Tensor> hs, counted;
  for (int k = 0; in->contains("h." + std::to_string(k)); ++k) {
    hs.push_back(in->tensor("h." + std::to_string(k)).clone());
    counted.push_back(at::ones({hs.back().size(1)}, at::kBool));
  }
  const AwqLayerResult r = awq_quantize_layer(model, li, hs, counted, s);
  std::map<std::string, at::Tensor> out;
  auto put_scale = [&](const char* name, const at::Tensor& t) {
    if (t.defined()) out[std::string("scales.") + name] = t.cpu();
  };
  put_scale("attn_in", r.scales.attn_in);
  put_scale("v_o", r.scales.v_o);
  put_scale("mlp_in", r.scales.mlp_in);
  put_scale("up_down", r.scales.up_down);
  std::vector<double> ratios, losses, stats;
  for (const auto& st : r.searches) {
    ratios.push_back(st.ratio);
    losses.insert(losses.end(), st.losses.begin(), st.losses.end());
  }
  out["ratios"] = at::tensor(ratios, at::kDouble);
  out["losses"] = at::tensor(losses, at::kDouble).reshape({static_cast<int64_t>(ratios.size()), s.n_grid});
  for (const auto& [path, mv] : r.clip) out["clip." + path] = mv;
  for (const auto& [path, q] : r.quantized) {
    out["q." + path + ".codes"] = q.codes.cpu();
    out["q." + path + ".scales"] = q.scales.cpu();
    out["q." + path + ".zeros"] = q.zeros.cpu();
    for (auto& [name, t] : pack_awq_gemm(path, q, s.group_size)) out[name] = t;
  }
  for (const auto& st : r.linears) stats.insert(stats.end(), {st.error, st.rtn_error});
  out["stats"] = at::tensor(stats, at::kDouble).reshape({-1, 2});
  out["input_norm"] = model.layer(li).input_norm.contiguous();
  out["post_attention_norm"] = model.layer(li).post_attention_norm.contiguous();
  for (std::size_t k = 0; k < hs.size(); ++k)
    out["out." + std::to_string(k)] = model.run_layer(li, hs[k], model.layer_inputs(1, hs[k].size(1))).contiguous();
  safetensors::save(argv[4], out);
  return 0;
}

int quantize(int argc, char** argv) {
  if (argc != 6) return 2;
  auto in = safetensors::File::open(argv[2]);
  const at::Tensor W = in->tensor("W").clone();
  const AwqSettings s = settings(argv[4], argv[5]);
  const GptqLinear q = awq_quantize(W, s);
  std::map<std::string, at::Tensor> out{{"codes", q.codes}, {"scales", q.scales}, {"zeros", q.zeros},
                                        {"fake", awq_fake_quantize(W, s)}};
  for (auto& [name, t] : pack_awq_gemm("layer", q, s.group_size)) out[name] = t;
  safetensors::save(argv[3], out);
  return 0;
}

int unpack(int argc, char** argv) {
  if (argc != 7) return 2;
  auto in = safetensors::File::open(argv[2]);
  const TensorGetter get = [&](const std::string& n) { return in->contains(n) ? in->tensor(n) : at::Tensor(); };
  const GptqLinear q = unpack_awq_gemm(get, argv[2], "layer", std::stoll(argv[4]), std::stoll(argv[5]), 4, std::stoll(argv[6]));
  safetensors::save(argv[3], {{"codes", q.codes}, {"scales", q.scales}, {"zeros", q.zeros}});
  return 0;
}

int clip(int argc, char** argv) {
  if (argc != 5) return 2;
  auto in = safetensors::File::open(argv[2]);
  AwqSettings s;
  s.group_size = std::stoll(argv[4]);
  safetensors::save(argv[3], {{"max_val", awq_search_clip(in->tensor("W").clone(), in->tensor("X").clone(), s)}});
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string usage =
      "usage: awq_tool layer MODEL_DIR IN OUT LAYER GROUP ZERO_POINT DUO CLIP | quantize IN OUT GROUP ZERO_POINT | "
      "unpack IN OUT OUT_FEATURES IN_FEATURES GROUP | clip IN OUT GROUP\n";
  if (argc < 2) {
    std::cerr << usage;
    return 2;
  }
  try {
    const std::string cmd = argv[1];
    const int rc = cmd == "layer"      ? layer(argc, argv)
                   : cmd == "quantize" ? quantize(argc, argv)
                   : cmd == "unpack"   ? unpack(argc, argv)
                   : cmd == "clip"     ? clip(argc, argv)
                                       : 2;
    if (rc == 2) std::cerr << usage;
    return rc;
  } catch (const std::exception& e) {
    std::cerr << "awq_tool: " << e.what() << "\n";
    return 1;
  }
}
