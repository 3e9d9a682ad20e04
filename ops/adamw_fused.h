// Fused AdamW over many parameters in one call, in both state formats (formats.md §2.3–2.4):
//   kFloat32:       m, v float32 per element (bnb optim_bits=32; the math of ops/adamw_math.h)
//   kBlockwise8bit: m, v uint8 codes in the signed / unsigned dynamic map, one float32 absmax per 256
//                   elements per moment (bnb optim_bits=8; the math of ops/adamw8bit_math.h)
// One call = one kernel launch per format on CUDA (not one per tensor) over a table of segments; on the CPU
// one parallel loop over every block of every segment.
//
// A segment is a slice [begin, begin+n) of one parameter, begin a multiple of 256, with pointers to its
// gradient slice and to its state wherever the caller keeps it (a flat buffer, a page of the pager in
// trainer/paged_state.h). Blocks never straddle segments, so cutting a parameter into segments at block
// boundaries gives the same bits as one segment for the whole parameter; only a parameter's last segment may
// end in a partial block (bnb's tail padding, adamw8bit_math.h). That is what makes paged state bit-identical
// to resident state.
//
// Per-tensor entry points (adamw8bit_step) wrap one segment, for tests and the oracle tool.
#pragma once
#include "ops/adamw.h"
#include "ops/adamw_math.h"

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

namespace qtrain::ops {

constexpr int64_t kAdamW8bitBlock = 256;     // elements per absmax (bnb BLOCKSIZE_2STATE since 0.44)
constexpr int64_t kAdamWMin8bitSize = 4096;  // bnb's min_8bit_size: smaller parameters keep 32-bit state

enum class AdamWFormat : uint8_t { kFloat32, kBlockwise8bit };

// bnb's create_dynamic_map(signed): float32 [256] on the CPU, same torch ops and roundings as bnb's Python.
// signed: 127 negative values, 0, 128 positive (1.0 on top); unsigned: 0, 254 positive values, 1.0.
at::Tensor dynamic_map(bool is_signed);

// Plain data shared by host and device code. The param and gradient pointers are already offset to the
// segment's first element. State pointers by format:
//   kFloat32:       s1 = m, s2 = v: float [n]; absmax1 = absmax2 = nullptr
//   kBlockwise8bit: s1, s2: uint8 [n] codes; absmax1, absmax2: float [ceil(n/256)]
struct AdamWSegment {
  void* p = nullptr;
  const void* g = nullptr;
  void* s1 = nullptr;
  void* s2 = nullptr;
  float* absmax1 = nullptr;
  float* absmax2 = nullptr;
  int64_t n = 0;
  int64_t block_begin = 0;  // filled by the op: this segment's first block in the call's block numbering
};

// One AdamW step over every segment. All params of one call share `param_dtype` (float32 or bfloat16) and
// `device`; maps (kBlockwise8bit only): float32 [256] on `device`, signed then unsigned (dynamic_map).
// The caller guarantees the pointers (the trainer's optimizer builds them from checked tensors).
void adamw_fused_step(AdamWFormat format, std::vector<AdamWSegment> segments, at::ScalarType param_dtype,
                      at::Device device, const adamw_math::StepScalars& s, const at::Tensor& qmap1 = {},
                      const at::Tensor& qmap2 = {});

// ---- per-tensor 8-bit API (tests, oracle tool) ----
struct AdamW8bitState {
  at::Tensor state1, state2;    // uint8 [numel]: codes of m (signed map) and v (unsigned map); zeros at start
  at::Tensor absmax1, absmax2;  // float32 [ceil(numel/256)]; zeros at start
  at::Tensor qmap1, qmap2;      // float32 [256] on the param's device
};
AdamW8bitState make_adamw8bit_state(const at::Tensor& param);
// Same contract as adamw_step (ops/adamw.h) with 8-bit state.
void adamw8bit_step(at::Tensor& param, const at::Tensor& grad, AdamW8bitState& state, int64_t step,
                    const AdamWParams& params, double gnorm_scale = 1.0);

// ---- raw back ends (tests compare them bit for bit) ----
namespace adamw_fused_cpu {
// T in {float, c10::BFloat16}. Scalar reference: one segment, block by block, in the order of
// adamw8bit_math.h (the specification).
template <typename T>
void step8_reference(const AdamWSegment& seg, const float* qmap1, const float* qmap2, const adamw_math::StepScalars& s);
// Every block of every segment in parallel (at::parallel_for); segments' block_begin already filled.
template <typename T>
void step8_fast(const std::vector<AdamWSegment>& segs, int64_t total_blocks, const float* qmap1, const float* qmap2,
                const adamw_math::StepScalars& s);
template <typename T>
void step32_fast(const std::vector<AdamWSegment>& segs, int64_t total_blocks, const adamw_math::StepScalars& s);
}  // namespace adamw_fused_cpu

#if defined(QTRAIN_WITH_CUDA)
namespace adamw_fused_cuda {
// Segments with block_begin filled; launches one kernel on the current stream.
void step(AdamWFormat format, const std::vector<AdamWSegment>& segs, int64_t total_blocks, at::ScalarType dtype,
          at::Device device, const adamw_math::StepScalars& s, const float* qmap1, const float* qmap2);
}  // namespace adamw_fused_cuda
#endif

}  // namespace qtrain::ops
