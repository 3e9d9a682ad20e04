// Fused AdamW: the dynamic maps, the dispatch of a segment table to the CPU or CUDA back end, and the
// per-tensor 8-bit API with its argument checks. The math lives in ops/adamw_math.h and ops/adamw8bit_math.h.
#include "ops/adamw_fused.h"

#include <ATen/core/grad_mode.h>
#include <c10/util/BFloat16.h>

#include <cmath>

namespace qtrain::ops {

namespace {

int64_t blocks_of(int64_t n) { return (n + kAdamW8bitBlock - 1) / kAdamW8bitBlock; }

void check_map(const at::Tensor& q, const char* name, at::Device device) {
  TORCH_CHECK(q.defined() && q.scalar_type() == at::kFloat && q.numel() == 256 && q.is_contiguous(),
              "adamw_fused_step: ", name, " must be a contiguous float32 [256] dynamic map");
  TORCH_CHECK(q.device() == device, "adamw_fused_step: ", name, " must be on ", device, ", found ", q.device());
}

void bump_version(const at::Tensor& t) {
  if (!t.is_inference()) t.unsafeGetTensorImpl()->bump_version();
}

}  // namespace

at::Tensor dynamic_map(bool is_signed) {
  // bnb functional.create_dynamic_map(signed, max_exponent_bits=7, total_bits=8), with the same float32 torch
  // ops: per exponent i, linspace(0.1, 1, n) midpoints scaled by 10^(i-6) (a Python double, cast by the op).
  std::vector<at::Tensor> parts;
  for (int i = 0; i < 7; ++i) {
    const int64_t items = is_signed ? (int64_t{1} << i) + 1 : (int64_t{1} << (i + 1)) + 1;
    const at::Tensor b = at::linspace(0.1, 1.0, items, at::kFloat);
    const at::Tensor means = (b.slice(0, 0, items - 1) + b.slice(0, 1, items)) / 2.0;
    const double scale = std::pow(10.0, i - 6);
    parts.push_back(means * scale);
    if (is_signed) parts.push_back(means * -scale);
  }
  parts.push_back(at::zeros({1}, at::kFloat));
  parts.push_back(at::ones({1}, at::kFloat));
  const at::Tensor all = at::cat(parts);
  TORCH_CHECK(all.numel() == 256, "dynamic_map: built ", all.numel(), " values, expected 256");
  return std::get<0>(all.sort());
}

void adamw_fused_step(AdamWFormat format, std::vector<AdamWSegment> segments, at::ScalarType param_dtype,
                      at::Device device, const adamw_math::StepScalars& s, const at::Tensor& qmap1,
                      const at::Tensor& qmap2) {
  TORCH_CHECK(param_dtype == at::kFloat || param_dtype == at::kBFloat16,
              "adamw_fused_step: params must be float32 or bfloat16, found ", param_dtype);
  int64_t total = 0;
  for (AdamWSegment& seg : segments) {
    TORCH_CHECK(seg.n > 0 && seg.p && seg.g && seg.s1 && seg.s2, "adamw_fused_step: empty or incomplete segment");
    TORCH_CHECK(format == AdamWFormat::kFloat32 || (seg.absmax1 && seg.absmax2),
                "adamw_fused_step: an 8-bit segment needs absmax1 and absmax2");
    seg.block_begin = total;
    total += blocks_of(seg.n);
  }
  if (total == 0) return;
  const float* q1 = nullptr;
  const float* q2 = nullptr;
  if (format == AdamWFormat::kBlockwise8bit) {
    check_map(qmap1, "qmap1", device);
    check_map(qmap2, "qmap2", device);
    q1 = qmap1.data_ptr<float>();
    q2 = qmap2.data_ptr<float>();
  }
  if (device.is_cpu()) {
    namespace cpu = adamw_fused_cpu;
    const bool bf16 = param_dtype == at::kBFloat16;
    if (format == AdamWFormat::kFloat32) {
      bf16 ? cpu::step32_fast<c10::BFloat16>(segments, total, s) : cpu::step32_fast<float>(segments, total, s);
    } else {
      bf16 ? cpu::step8_fast<c10::BFloat16>(segments, total, q1, q2, s)
           : cpu::step8_fast<float>(segments, total, q1, q2, s);
    }
    return;
  }
#if defined(QTRAIN_WITH_CUDA)
  TORCH_CHECK(device.is_cuda(), "adamw_fused_step: device must be the CPU or a CUDA device, found ", device);
  adamw_fused_cuda::step(format, segments, total, param_dtype, device, s, q1, q2);
#else
  TORCH_CHECK(false, "adamw_fused_step: device must be the CPU (this build has no CUDA kernels), found ", device);
#endif
}

AdamW8bitState make_adamw8bit_state(const at::Tensor& param) {
  TORCH_CHECK(param.defined() && param.numel() > 0, "make_adamw8bit_state: tensor param must have elements");
  TORCH_CHECK(param.scalar_type() == at::kFloat || param.scalar_type() == at::kBFloat16,
              "make_adamw8bit_state: tensor param must be float32 or bfloat16, found ", param.scalar_type());
  const auto bytes = at::TensorOptions().dtype(at::kByte).device(param.device());
  const auto f32 = at::TensorOptions().dtype(at::kFloat).device(param.device());
  AdamW8bitState st;
  // bnb zero-fills the codes (get_state_buffer) and the absmax: code 0 of the signed map is -0.99, times 0.
  st.state1 = at::zeros({param.numel()}, bytes);
  st.state2 = at::zeros({param.numel()}, bytes);
  st.absmax1 = at::zeros({blocks_of(param.numel())}, f32);
  st.absmax2 = at::zeros({blocks_of(param.numel())}, f32);
  st.qmap1 = dynamic_map(true).to(param.device());
  st.qmap2 = dynamic_map(false).to(param.device());
  return st;
}

void adamw8bit_step(at::Tensor& param, const at::Tensor& grad, AdamW8bitState& st, int64_t step,
                    const AdamWParams& params, double gnorm_scale) {
  const at::NoGradGuard no_grad;
  const char* fn = "adamw8bit_step";
  TORCH_CHECK(param.defined() && param.numel() > 0 && param.is_contiguous(), fn,
              ": tensor param must be a contiguous tensor with elements");
  TORCH_CHECK(param.scalar_type() == at::kFloat || param.scalar_type() == at::kBFloat16, fn,
              ": tensor param must be float32 or bfloat16, found ", param.scalar_type());
  TORCH_CHECK(grad.defined() && grad.sizes() == param.sizes() && grad.scalar_type() == param.scalar_type() &&
                  grad.device() == param.device(),
              fn, ": tensor grad must have the param's shape ", param.sizes(), ", dtype and device");
  const int64_t n = param.numel();
  for (const auto& [t, name, dtype, numel] :
       {std::tuple<const at::Tensor&, const char*, at::ScalarType, int64_t>{st.state1, "state1", at::kByte, n},
        {st.state2, "state2", at::kByte, n},
        {st.absmax1, "absmax1", at::kFloat, blocks_of(n)},
        {st.absmax2, "absmax2", at::kFloat, blocks_of(n)}}) {
    TORCH_CHECK(t.defined() && t.scalar_type() == dtype && t.numel() == numel && t.is_contiguous() &&
                    t.device() == param.device(),
                fn, ": state.", name, " must be a contiguous ", dtype, " [", numel, "] on ", param.device(),
                " (create it with make_adamw8bit_state)");
  }
  const adamw_math::StepScalars s = adamw_step_scalars(params, step, gnorm_scale);
  const at::Tensor g = grad.contiguous();
  AdamWSegment seg;
  seg.p = param.data_ptr();
  seg.g = g.data_ptr();
  seg.s1 = st.state1.data_ptr();
  seg.s2 = st.state2.data_ptr();
  seg.absmax1 = st.absmax1.data_ptr<float>();
  seg.absmax2 = st.absmax2.data_ptr<float>();
  seg.n = n;
  adamw_fused_step(AdamWFormat::kBlockwise8bit, {seg}, param.scalar_type(), param.device(), s, st.qmap1, st.qmap2);
  for (const at::Tensor* t : {&param, &st.state1, &st.state2, &st.absmax1, &st.absmax2}) bump_version(*t);
}

}  // namespace qtrain::ops
