// GPTQ (Frantar et al. 2022, as AutoGPTQ / GPTQModel implement it; formats.md §5.1-5.4) and plain
// round-to-nearest on the same grid. All libtorch ops in fp32 on the weight's device, so the CPU and
// CUDA share the code. The results are integer codes + grids (GptqLinear), which gptq_format.h packs.
#pragma once

#include <cstdint>
#include <utility>

#include <ATen/ATen.h>

#include "data/io/gptq_format.h"

namespace qtrain {

// The per-row min/max grid of one group slice x [out, g] (formats.md §5.4): scale [out] fp32 and zero
// [out] fp32 (an integer value). Zero always representable; an all-zero row gets xmin=-1, xmax=+1.
// Bit-identical to the references (tests/oracle/test_gptq_oracle.py), quirks included: a symmetric row
// slice that never goes below 0 keeps xmin = 0, so its upper half clamps at (maxq-1)/2 steps. One
// deliberate deviation: an asymmetric zero that rounds to 0 (not storable in v1, which writes zero-1)
// becomes 1 with scale xmax/(maxq-1), a grid that still covers the slice.
std::pair<at::Tensor, at::Tensor> gptq_grid(const at::Tensor& x, int bits, bool sym);
// clamp(round(x/scale) + zero, 0, 2^bits-1) with torch.round (half to even); x [out, c], scale/zero [out].
at::Tensor gptq_codes(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& zero, int bits);

// Round-to-nearest: every group's grid from the weight itself, no error feedback. W [out, in] float.
// desc_act / static_groups / damp do not apply; g_idx[k] = k / group_size.
GptqLinear rtn_quantize(const at::Tensor& W, const GptqSettings& s);

// H = 2/n Σ x xᵀ over the n tokens seen so far (GPTQModel counts tokens, AutoGPTQ sequences; the factor
// cancels in GPTQ because damping is relative to mean(diag H)). Accumulated on `device` in `dtype`
// (fp32 as the references, or fp64) with the references' running rescale H *= n/(n+b).
class HessianAccumulator {
 public:
  explicit HessianAccumulator(int64_t in, at::Device device, at::ScalarType dtype = at::kFloat);
  void add(const at::Tensor& x);  // x [..., in], any float dtype/device (moved to ours)
  at::Tensor hessian() const;     // [in, in] in the accumulation dtype; zeros before any add
  int64_t tokens() const { return n_; }
  int64_t in() const { return in_; }

 private:
  int64_t in_;
  at::Tensor h_;  // [in, in]
  int64_t n_ = 0;
};

struct GptqStats {
  double damp_used = 0;  // the damp_percent that made H + damp·mean(diag)·I Cholesky-factorable
  int retries = 0;       // how many times damping was raised by 0.01 (GPTQModel's damp_auto_increment)
  // GPTQ's own loss, as the references print it: Σ over columns i of Σ_rows (w_i - q_i)² / Hinv[i,i]² / 2,
  // with w_i the error-updated column and Hinv the upper Cholesky factor of the damped H⁻¹. It is
  // the increase of the layer's (damped) output error that each column's rounding causes.
  double error = 0;
  int64_t dead_columns = 0;  // columns with diag(H) == 0 (inputs never active): zeroed in W
};

// GPTQ of W [out, in] (any float dtype; kept on its device) with the Hessian H [in, in] of its input.
// Throws UsageError on bad settings/shapes, InputError when H stays non-positive-definite with damping
// below 1 (a non-finite H, usually).
GptqLinear gptq_quantize(const at::Tensor& W, const at::Tensor& H, const GptqSettings& s, GptqStats* stats = nullptr);

// trace((W-Q) H (W-Q)ᵀ) in fp64: with H = 2/n Σ xxᵀ this is 2/n · ||(W-Q) Xᵀ||², the layer-output
// error the quantization adds on the calibration tokens. W, Q [out, in]; H [in, in] (undamped).
double hessian_error(const at::Tensor& W, const at::Tensor& Q, const at::Tensor& H);

}  // namespace qtrain
