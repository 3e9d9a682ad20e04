// CPU back ends of the fused AdamW step (ops/adamw_fused.h): the 8-bit scalar reference (one segment, block
// by block: the specification to read against adamw8bit_math.h), and the fast paths that run every block of
// every segment in parallel. The per-element math is adamw_math.h / adamw8bit_math.h, shared with CUDA.
#include "ops/adamw_fused.h"
#include "ops/adamw8bit_math.h"

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>

#include <algorithm>
#include <cfloat>
#include <type_traits>

namespace qtrain::ops::adamw_fused_cpu {
namespace am = adamw_math;
namespace a8 = adamw8bit_math;

namespace {

template <typename T>
float to_float(T v) {
  return static_cast<float>(v);  // bf16 -> float is exact
}

template <typename T>
T round_to(float v) {
  if constexpr (std::is_same_v<T, float>) {
    return v;
  } else {
    return T(v);  // round to nearest even, as __float2bfloat16_rn
  }
}

// Block `b` of `seg`: elements [b*256, min(n, (b+1)*256)), steps 1-5 of adamw8bit_math.h.
template <typename T>
void block8(const AdamWSegment& seg, int64_t b, const float* qmap1, const float* qmap2, const am::StepScalars& s) {
  const int64_t begin = b * a8::kBlock;
  const int nb = static_cast<int>(std::min<int64_t>(a8::kBlock, seg.n - begin));
  T* p = static_cast<T*>(seg.p) + begin;
  const T* g = static_cast<const T*>(seg.g) + begin;
  uint8_t* c1 = static_cast<uint8_t*>(seg.s1) + begin;
  uint8_t* c2 = static_cast<uint8_t*>(seg.s2) + begin;
  const float a1 = seg.absmax1[b];
  const float a2 = seg.absmax2[b];
  float m[a8::kBlock];
  float v[a8::kBlock];
  bool ok[a8::kBlock];
  float max1 = -FLT_MAX;
  float max2 = -FLT_MAX;
  for (int j = 0; j < nb; ++j) {
    const float gj = to_float(g[j]);
    ok[j] = a8::finite(gj);
    if (ok[j]) {
      v[j] = a8::mul_rn(qmap2[c2[j]], a2);
      m[j] = a8::mul_rn(qmap1[c1[j]], a1);
      a8::update_state(gj, m[j], v[j], s);
    } else {
      m[j] = 0.0f;
      v[j] = 0.0f;
    }
    max1 = a8::fmax_(max1, std::fabs(m[j]));
    max2 = a8::fmax_(max2, std::fabs(v[j]));
  }
  if (nb < a8::kBlock) {  // bnb's padding of a tail block joins the reduction
    float pm = 0.0f;
    float pv = 0.0f;
    a8::padding_state(qmap1, qmap2, a1, a2, s, pm, pv);
    max1 = a8::fmax_(max1, std::fabs(pm));
    max2 = a8::fmax_(max2, std::fabs(pv));
  }
  seg.absmax1[b] = max1;
  seg.absmax2[b] = max2;
  for (int j = 0; j < nb; ++j) {
    if (ok[j]) {
      T pj = round_to<T>(a8::param_update(to_float(p[j]), m[j], v[j], s));
      if (s.apply_decay) pj = round_to<T>(am::decay_update(to_float(pj), s));
      p[j] = pj;
    }
    c1[j] = a8::requantize_m(qmap1, m[j], max1);
    c2[j] = a8::requantize_v(qmap2, v[j], max2);
  }
}

// Block `b` of a 32-bit segment: the element-wise update of ops/adamw_math.h.
template <typename T>
void block32(const AdamWSegment& seg, int64_t b, const am::StepScalars& s) {
  const int64_t begin = b * a8::kBlock;
  const int64_t end = std::min<int64_t>(seg.n, begin + a8::kBlock);
  T* __restrict__ p = static_cast<T*>(seg.p);
  const T* __restrict__ g = static_cast<const T*>(seg.g);
  float* __restrict__ m = static_cast<float*>(seg.s1);
  float* __restrict__ v = static_cast<float*>(seg.s2);
  for (int64_t i = begin; i < end; ++i) {
    const T stepped = round_to<T>(am::adam_update(to_float(p[i]), to_float(g[i]), m[i], v[i], s));
    p[i] = s.apply_decay ? round_to<T>(am::decay_update(to_float(stepped), s)) : stepped;
  }
}

int64_t blocks_of(int64_t n) { return (n + a8::kBlock - 1) / a8::kBlock; }

// The segment holding global block `gb` (segments sorted by block_begin, which the dispatcher assigns).
const AdamWSegment& segment_of(const std::vector<AdamWSegment>& segs, int64_t gb) {
  auto it = std::upper_bound(segs.begin(), segs.end(), gb,
                             [](int64_t x, const AdamWSegment& sg) { return x < sg.block_begin; });
  return *(it - 1);
}

// ~32 KiB of 8-bit state per task at 32 blocks; several tasks per segment on a 2-core box for a LoRA matrix.
constexpr int64_t kGrainBlocks = 32;

}  // namespace

template <typename T>
void step8_reference(const AdamWSegment& seg, const float* qmap1, const float* qmap2, const am::StepScalars& s) {
  for (int64_t b = 0; b < blocks_of(seg.n); ++b) block8<T>(seg, b, qmap1, qmap2, s);
}

template <typename T>
void step8_fast(const std::vector<AdamWSegment>& segs, int64_t total_blocks, const float* qmap1, const float* qmap2,
                const am::StepScalars& s) {
  at::parallel_for(0, total_blocks, kGrainBlocks, [&](int64_t begin, int64_t end) {
    for (int64_t gb = begin; gb < end; ++gb) {
      const AdamWSegment& seg = segment_of(segs, gb);
      block8<T>(seg, gb - seg.block_begin, qmap1, qmap2, s);
    }
  });
}

template <typename T>
void step32_fast(const std::vector<AdamWSegment>& segs, int64_t total_blocks, const am::StepScalars& s) {
  at::parallel_for(0, total_blocks, kGrainBlocks, [&](int64_t begin, int64_t end) {
    const am::StepScalars sc = s;
    for (int64_t gb = begin; gb < end; ++gb) {
      const AdamWSegment& seg = segment_of(segs, gb);
      block32<T>(seg, gb - seg.block_begin, sc);
    }
  });
}

template void step8_reference<float>(const AdamWSegment&, const float*, const float*, const am::StepScalars&);
template void step8_reference<c10::BFloat16>(const AdamWSegment&, const float*, const float*, const am::StepScalars&);
template void step8_fast<float>(const std::vector<AdamWSegment>&, int64_t, const float*, const float*,
                                const am::StepScalars&);
template void step8_fast<c10::BFloat16>(const std::vector<AdamWSegment>&, int64_t, const float*, const float*,
                                        const am::StepScalars&);
template void step32_fast<float>(const std::vector<AdamWSegment>&, int64_t, const am::StepScalars&);
template void step32_fast<c10::BFloat16>(const std::vector<AdamWSegment>&, int64_t, const am::StepScalars&);

}  // namespace qtrain::ops::adamw_fused_cpu
