// CPU back ends of AdamW: the scalar reference (the specification, to be read against formats.md §2.4) and
// the fast path (chunks in parallel, restrict-qualified inner loop), tested equal bit for bit. Both call the
// per-element math of ops/adamw_math.h, shared with the CUDA kernel.
#include "ops/adamw.h"
#include "ops/adamw_math.h"

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>

#include <type_traits>

namespace qtrain::ops::adamw_cpu {
namespace am = adamw_math;

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
    return T(v);  // c10::BFloat16(float): round to nearest even, as torch's .to(bfloat16) and __float2bfloat16_rn
  }
}

// One element: the Adam update rounded to T, then (wd > 0) the decay of the ROUNDED value, rounded again.
template <typename T>
inline void step_element(T& p, T g, float& m, float& v, const am::StepScalars& s) {
  const T stepped = round_to<T>(am::adam_update(to_float(p), to_float(g), m, v, s));
  p = s.apply_decay ? round_to<T>(am::decay_update(to_float(stepped), s)) : stepped;
}

// Elements per parallel task: ~100 KiB of p, g, m, v per task, so a 2-core box still splits a LoRA matrix.
constexpr int64_t kGrain = 1 << 13;

}  // namespace

template <typename T>
void step_reference(T* p, const T* g, float* m, float* v, int64_t n, const am::StepScalars& s) {
  for (int64_t i = 0; i < n; ++i) {
    // formats.md §2.4, line by line.
    const float gi = am::mul_rn(s.gnorm_scale, to_float(g[i]));
    m[i] = am::add_rn(am::mul_rn(s.beta1, m[i]), am::mul_rn(s.one_minus_beta1, gi));
    v[i] = am::add_rn(am::mul_rn(s.beta2, v[i]), am::mul_rn(s.one_minus_beta2, am::mul_rn(gi, gi)));
    const float update = am::mul_rn(s.step_size, am::div_rn(m[i], am::add_rn(am::sqrt_rn(v[i]), s.eps_c2)));
    p[i] = round_to<T>(am::add_rn(to_float(p[i]), update));
    if (s.apply_decay) p[i] = round_to<T>(am::mul_rn(to_float(p[i]), s.decay));
  }
}

template <typename T>
void step_fast(T* p, const T* g, float* m, float* v, int64_t n, const am::StepScalars& s) {
  at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
    T* __restrict__ pp = p;
    const T* __restrict__ gg = g;
    float* __restrict__ mm = m;
    float* __restrict__ vv = v;
    const am::StepScalars sc = s;  // a local copy: the compiler may keep it in registers across the loop
    for (int64_t i = begin; i < end; ++i) step_element(pp[i], gg[i], mm[i], vv[i], sc);
  });
}

template void step_reference<float>(float*, const float*, float*, float*, int64_t, const am::StepScalars&);
template void step_reference<c10::BFloat16>(c10::BFloat16*, const c10::BFloat16*, float*, float*, int64_t,
                                            const am::StepScalars&);
template void step_fast<float>(float*, const float*, float*, float*, int64_t, const am::StepScalars&);
template void step_fast<c10::BFloat16>(c10::BFloat16*, const c10::BFloat16*, float*, float*, int64_t,
                                       const am::StepScalars&);

}  // namespace qtrain::ops::adamw_cpu
