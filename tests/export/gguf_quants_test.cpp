// ggml block quantizers (export/gguf_quants.h): hand-computed blocks, round-trip error bounds on awkward
// shapes and values, layout consistency, bad row lengths. Bit-exactness against llama.cpp's reference is
// the oracle's job (tests/oracle/test_gguf.py: gguf-py and transcriptions of ggml-quants.c).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "data/error.h"
#include "export/gguf_quants.h"

namespace qtrain::gguf {
namespace {

const GgmlType kAll[] = {GgmlType::kF32, GgmlType::kF16, GgmlType::kQ8_0, GgmlType::kQ5_0,
                         GgmlType::kQ5_1, GgmlType::kQ4_K, GgmlType::kQ5_K, GgmlType::kQ6_K};

std::vector<float> round_trip(GgmlType t, const std::vector<float>& x, int64_t rows, int64_t cols) {
  const std::vector<uint8_t> q = quantize_rows(t, x.data(), rows, cols);
  EXPECT_EQ(q.size(), row_bytes(t, cols) * rows);
  std::vector<float> y(x.size());
  dequantize_rows(t, q.data(), rows, cols, y.data());
  return y;
}

TEST(GgufHalf, RoundsToNearestEvenAndSaturatesToInfinity) {
  EXPECT_EQ(fp32_to_fp16(1.0f), 0x3C00);
  EXPECT_EQ(fp32_to_fp16(1.0f + std::ldexp(1.0f, -11)), 0x3C00);      // tie → even (1.0)
  EXPECT_EQ(fp32_to_fp16(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3C02);  // tie → even (1 + 2^-9)
  EXPECT_EQ(fp32_to_fp16(-2.0f), 0xC000);
  EXPECT_EQ(fp32_to_fp16(65520.0f), 0x7C00);  // rounds up past the largest half: +inf
  EXPECT_EQ(fp32_to_fp16(std::ldexp(1.0f, -24)), 0x0001);  // smallest subnormal
  EXPECT_EQ(fp16_to_fp32(0x3555), 0.333251953125f);
}

TEST(GgufQuants, Q8_0HandComputedBlock) {
  // amax 127 → d = 1 exactly, q = x (roundf: 2.5 → 3, −2.5 → −3, half away from zero).
  std::vector<float> x(32, 0.0f);
  x[0] = 127;
  x[1] = -127;
  x[2] = 2.5f;
  x[3] = -2.5f;
  x[4] = 0.49f;
  const std::vector<uint8_t> q = quantize_rows(GgmlType::kQ8_0, x.data(), 1, 32);
  ASSERT_EQ(q.size(), 34u);
  EXPECT_EQ(q[0] | (q[1] << 8), 0x3C00);
  EXPECT_EQ(static_cast<int8_t>(q[2]), 127);
  EXPECT_EQ(static_cast<int8_t>(q[3]), -127);
  EXPECT_EQ(static_cast<int8_t>(q[4]), 3);
  EXPECT_EQ(static_cast<int8_t>(q[5]), -3);
  EXPECT_EQ(static_cast<int8_t>(q[6]), 0);
}

TEST(GgufQuants, Q5_0HandComputedBlock) {
  // The largest magnitude is −16 → d = 1; q = trunc(x + 16.5): −16 → 0, 15 → 31, 0.6 → 17 (bit 4 in qh).
  std::vector<float> x(32, 0.0f);
  x[0] = -16;
  x[1] = 15;
  x[17] = 0.6f;
  const std::vector<uint8_t> q = quantize_rows(GgmlType::kQ5_0, x.data(), 1, 32);
  ASSERT_EQ(q.size(), 22u);
  EXPECT_EQ(q[0] | (q[1] << 8), 0x3C00);
  uint32_t qh;
  std::memcpy(&qh, q.data() + 2, 4);
  // codes: x[0] 0, x[1] 31, x[17] 17, others 16 (bit 4 set for every code ≥ 16)
  EXPECT_EQ(qh & 1u, 0u);
  EXPECT_EQ((qh >> 1) & 1u, 1u);
  EXPECT_EQ(q[6 + 0] & 0xF, 0);         // element 0 low nibble
  EXPECT_EQ(q[6 + 1] & 0xF, 15);        // element 1: 31 & 0xF
  EXPECT_EQ(q[6 + 1] >> 4, 1);          // element 17: 17 & 0xF
  std::vector<float> y(32);
  dequantize_rows(GgmlType::kQ5_0, q.data(), 1, 32, y.data());
  EXPECT_EQ(y[0], -16.0f);
  EXPECT_EQ(y[1], 15.0f);
  EXPECT_EQ(y[17], 1.0f);
  EXPECT_EQ(y[5], 0.0f);
}

TEST(GgufQuants, ZeroSuperBlocksAreAllZeroBytes) {
  for (GgmlType t : {GgmlType::kQ4_K, GgmlType::kQ5_K, GgmlType::kQ6_K, GgmlType::kQ8_0}) {
    std::vector<float> x(512, 0.0f);
    const std::vector<uint8_t> q = quantize_rows(t, x.data(), 2, 256);
    for (uint8_t b : q) ASSERT_EQ(b, 0) << ggml_type_name(t);
    const std::vector<float> y = round_trip(t, x, 2, 256);
    for (float v : y) ASSERT_EQ(v, 0.0f);
  }
}

// Bound per element of one block (32 elements; Q6_K 16) inside its super-block `sb` (256 elements, the
// block itself for 32-element types):
//  - Q8_0 / Q5_0 / Q5_1: half a step of the block's grid (Q5_0 a full step: its grid −16..15 ends a step
//    short on the side opposite the largest magnitude), plus the f16 rounding of the stored scale
//    (2^-11 relative) times the largest code;
//  - K-quants: a full step of the block's own grid, plus what the 6-bit (Q4_K/Q5_K) or 8-bit (Q6_K)
//    quantization of the block scale against the super-block's largest can cost at the clamped ends:
//    |d·sc − s| ≤ d/2, times the largest code; the min likewise (≤ dmin/2). With d = max scale/63 (/128):
//    Q4_K ≤ R_max/126 + M_max/126, Q5_K the same, Q6_K ≤ A/256 (R_max the largest block range, M_max the
//    largest −min, A the super-block's largest magnitude); doubled here.
//  - every quantized type: half an f16 subnormal (2^-25) times the largest code product (≤ 63·31), for
//    scales below the normal f16 range.
// Measured maxima are about half of these.
struct Range {
  double lo = 0, hi = 0, amax = 0;
};
Range range_of(const float* x, int n) {
  Range r;
  for (int i = 0; i < n; ++i) {
    r.lo = std::min<double>(r.lo, x[i]);
    r.hi = std::max<double>(r.hi, x[i]);
    r.amax = std::max<double>(r.amax, std::fabs(x[i]));
  }
  return r;
}
double step_bound(GgmlType t, const float* block, int n, const float* sb) {
  const Range b = range_of(block, n);
  const double e16 = std::ldexp(1.0, -11), sub = 2048 * std::ldexp(1.0, -25);
  double r_max = 0, m_max = 0;
  if (t == GgmlType::kQ4_K || t == GgmlType::kQ5_K) {
    for (int j = 0; j < 8; ++j) {
      const Range s = range_of(sb + 32 * j, 32);
      r_max = std::max(r_max, s.hi - s.lo);
      m_max = std::max(m_max, -s.lo);
    }
  }
  switch (t) {
    case GgmlType::kF32: return 0;
    case GgmlType::kF16: return b.amax * e16 + std::ldexp(1.0, -25);
    case GgmlType::kQ8_0: return b.amax / 127 * 0.5 + b.amax * 128 * e16 / 127 + sub;
    case GgmlType::kQ5_0: return b.amax / 16 + b.amax * 17 * e16 / 16 + sub;  // grid −16..15: a step short at +amax
    case GgmlType::kQ5_1: return (b.hi - b.lo) / 31 * (0.5 + 32 * e16) + std::fabs(b.lo) * e16 + sub;
    case GgmlType::kQ4_K: return (b.hi - b.lo) / 15 + (r_max + m_max) / 63 + (r_max + m_max) * 64 * e16 + sub;
    case GgmlType::kQ5_K: return (b.hi - b.lo) / 31 + (r_max + m_max) / 63 + (r_max + m_max) * 64 * e16 + sub;
    case GgmlType::kQ6_K: return b.amax / 31 + range_of(sb, 256).amax / 128 + range_of(sb, 256).amax * 64 * e16 + sub;
  }
  return 0;
}

int sub_block(GgmlType t) {
  switch (t) {
    case GgmlType::kQ6_K: return 16;
    case GgmlType::kF32:
    case GgmlType::kF16: return 1;
    default: return 32;
  }
}

TEST(GgufQuants, RoundTripWithinBoundOnAwkwardRows) {
  const uint32_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 gen(seed);
  std::normal_distribution<float> normal;
  const int64_t rows = 7, cols = 768;  // three super-blocks per row
  std::vector<float> x(rows * cols);
  for (float& v : x) v = normal(gen);
  for (int i = 0; i < 32; ++i) x[i] = 0;                        // a zero sub-block
  for (int i = 32; i < 64; ++i) x[i] = 0.3f;                    // a constant one
  x[cols + 3] = 50;                                              // an outlier
  for (int64_t i = 0; i < cols; ++i) x[2 * cols + i] = std::fabs(x[2 * cols + i]) + 2;  // all positive
  for (int64_t i = 0; i < cols; ++i) x[3 * cols + i] *= 1e-5f;                          // tiny
  for (int64_t i = 0; i < cols; ++i) x[4 * cols + i] = -std::fabs(x[4 * cols + i]) * 1000;  // large negative
  for (GgmlType t : kAll) {
    const std::vector<float> y = round_trip(t, x, rows, cols);
    const int sb = sub_block(t);
    double worst = 0;
    for (int64_t b = 0; b < rows * cols; b += sb) {
      const int64_t super = block_elements(t) == 256 ? b / 256 * 256 : b;
      const double bound = step_bound(t, x.data() + b, sb, x.data() + super) * 1.0001 + 1e-30;
      for (int i = 0; i < sb; ++i) {
        const double err = std::fabs(static_cast<double>(y[b + i]) - x[b + i]);
        ASSERT_LE(err, bound) << ggml_type_name(t) << " element " << b + i << " x " << x[b + i] << " → " << y[b + i];
        if (bound > 0) worst = std::max(worst, err / bound);
      }
    }
    // Negative control for the lossy types: they do lose something, so the bound is not vacuous.
    if (t != GgmlType::kF32) EXPECT_GT(worst, 0.0) << ggml_type_name(t);
  }
}

TEST(GgufQuants, EachElementLandsAtItsOwnPosition) {
  // One spike per 32-element sub-block, at a different offset each: quantize then dequantize must put
  // the largest value back at the spike's index (packing and unpacking agree on the layout).
  for (GgmlType t : {GgmlType::kQ8_0, GgmlType::kQ5_0, GgmlType::kQ5_1, GgmlType::kQ4_K, GgmlType::kQ5_K, GgmlType::kQ6_K}) {
    for (int offset = 0; offset < 32; offset += 5) {
      std::vector<float> x(256, 0.01f);
      for (int s = 0; s < 8; ++s) x[32 * s + (offset + 7 * s) % 32] = 3.0f + s;
      const std::vector<float> y = round_trip(t, x, 1, 256);
      for (int s = 0; s < 8; ++s) {
        const int want = 32 * s + (offset + 7 * s) % 32;
        int arg = 32 * s;
        for (int i = 32 * s; i < 32 * s + 32; ++i) if (y[i] > y[arg]) arg = i;
        ASSERT_EQ(arg, want) << ggml_type_name(t) << " sub-block " << s;
      }
    }
  }
}

TEST(GgufQuants, RowsThatDoNotFillBlocksAreRejected) {
  std::vector<float> x(200, 1.0f);
  EXPECT_THROW(quantize_rows(GgmlType::kQ4_K, x.data(), 1, 200), InputError);
  EXPECT_THROW(quantize_rows(GgmlType::kQ8_0, x.data(), 2, 100), InputError);
  EXPECT_NO_THROW(quantize_rows(GgmlType::kF16, x.data(), 2, 100));
  EXPECT_EQ(row_bytes(GgmlType::kQ4_K, 4096), 16u * 144u);
  EXPECT_EQ(row_bytes(GgmlType::kQ6_K, 256), 210u);
  EXPECT_EQ(row_bytes(GgmlType::kQ5_0, 64), 44u);
}

}  // namespace
}  // namespace qtrain::gguf
