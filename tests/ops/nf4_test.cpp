// NF4/FP4: the CPU fast path equals the scalar reference bit for bit, round trips stay within the quantizer's
// error bound, invalid inputs are rejected with a message, and (with a GPU) the CUDA kernels equal the CPU
// reference bit for bit. The bitsandbytes oracle lives in tests/oracle/test_nf4_bnb.py.
#include "ops/nf4.h"
#include "ops/nf4_math.h"
#include "tests/cuda_sync_counter.h"

#include <gtest/gtest.h>
#include <torch/cuda.h>

#if defined(QTRAIN_WITH_CUDA)
#include <c10/cuda/CUDAFunctions.h>
#endif

#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

namespace {

using qtrain::ops::QuantParams;
using qtrain::ops::QuantState;
using qtrain::ops::QuantType;
namespace cpu = qtrain::ops::nf4_cpu;

const std::vector<int64_t> kBlocksizes = {32, 64, 128, 256, 512, 1024, 2048, 4096};
// Awkward sizes: 1 element, odd counts, not multiples of 64 or 256, just above/below a block boundary.
const std::vector<int64_t> kSizes = {1, 2, 3, 31, 33, 63, 65, 255, 257, 1000, 4095, 4097, 12345, 65537};

enum class Pattern { kNormal, kHuge, kTiny, kZeroBlocks, kSubnormal };

// Fresh random data per call (seeded from std::random_device, printed on failure through SCOPED_TRACE).
std::vector<float> make_data(int64_t n, Pattern p, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(n);
  for (auto& v : x) v = normal(rng);
  switch (p) {
    case Pattern::kNormal: break;
    case Pattern::kHuge:
      for (auto& v : x) v *= 1e36f;
      break;
    case Pattern::kTiny:
      for (auto& v : x) v *= 1e-30f;
      break;
    case Pattern::kSubnormal:
      for (auto& v : x) v *= 1e-39f;  // below the 1e-38 absmax floor
      break;
    case Pattern::kZeroBlocks:
      for (int64_t i = 0; i < n / 2; ++i) x[i] = 0.0f;
      if (n > 5) x[n - 1] = x[n - 2] = 0.0f;
      break;
  }
  return x;
}

std::string pattern_name(Pattern p) {
  switch (p) {
    case Pattern::kNormal: return "normal";
    case Pattern::kHuge: return "huge";
    case Pattern::kTiny: return "tiny";
    case Pattern::kZeroBlocks: return "zero_blocks";
    case Pattern::kSubnormal: return "subnormal";
  }
  return "?";
}

uint32_t bits(float v) {
  uint32_t b;
  std::memcpy(&b, &v, 4);
  return b;
}

TEST(Nf4Cpu, FastQuantizeEqualsReference) {
  const uint32_t base_seed = std::random_device{}();
  SCOPED_TRACE("base seed " + std::to_string(base_seed));
  uint32_t seed = base_seed;
  for (const QuantType type : {QuantType::kNF4, QuantType::kFP4}) {
    for (const int64_t bs : kBlocksizes) {
      for (const int64_t n : kSizes) {
        for (const Pattern p : {Pattern::kNormal, Pattern::kHuge, Pattern::kTiny, Pattern::kZeroBlocks,
                                Pattern::kSubnormal}) {
          const std::vector<float> x = make_data(n, p, ++seed);
          const int64_t nb = (n + bs - 1) / bs;
          std::vector<uint8_t> packed_ref((n + 1) / 2, 0xAB), packed_fast((n + 1) / 2, 0xCD);  // poisoned
          std::vector<float> am_ref(nb, -1.0f), am_fast(nb, -2.0f);
          cpu::quantize_reference(x.data(), n, bs, type, packed_ref.data(), am_ref.data());
          cpu::quantize_fast(x.data(), n, bs, type, packed_fast.data(), am_fast.data());
          for (int64_t j = 0; j < (n + 1) / 2; ++j) {
            ASSERT_EQ(packed_ref[j], packed_fast[j])
                << "byte " << j << " n=" << n << " bs=" << bs << " " << pattern_name(p) << " seed " << seed;
          }
          for (int64_t b = 0; b < nb; ++b) {
            ASSERT_EQ(bits(am_ref[b]), bits(am_fast[b])) << "absmax block " << b << " n=" << n << " bs=" << bs;
          }
        }
      }
    }
  }
}

// Scales for the dequantize tests: a wide log-uniform spread, plus every special case a cast must get right
// (bfloat16/float16 subnormals and overflow, zero, NaN, inf) in some blocks.
std::vector<float> make_scales(int64_t nb, std::mt19937& rng) {
  std::uniform_real_distribution<float> u(-30.0f, 30.0f);
  std::vector<float> absmax(nb);
  for (auto& a : absmax) a = std::pow(10.0f, u(rng) / 3.0f);
  const float specials[] = {0.0f, 1e-39f, 3e-41f, 6e-8f, 3e-5f, 65504.0f, 70000.0f, 3.0e38f,
                            std::numeric_limits<float>::infinity(), std::numeric_limits<float>::quiet_NaN()};
  for (int64_t b = 0; b < nb; ++b) {
    if (rng() % 4 == 0) absmax[b] = specials[rng() % (sizeof(specials) / sizeof(float))];
  }
  return absmax;
}

// `out` poisoned, then filled on `isa`; every element (as bits) equal to the scalar reference.
template <typename T>
void expect_isa_dequant_equals_reference(cpu::CpuIsa isa, QuantType type, int64_t bs, int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> packed((n + 1) / 2);
  for (auto& b : packed) b = static_cast<uint8_t>(rng() & 0xFF);  // every byte value, not only quantizer output
  const int64_t nb = (n + bs - 1) / bs;
  const std::vector<float> absmax = make_scales(nb, rng);
  std::vector<T> ref(n), fast(n);
  std::memset(static_cast<void*>(fast.data()), 0xA5, n * sizeof(T));
  cpu::dequantize_reference(packed.data(), absmax.data(), n, bs, type, ref.data());
  cpu::dequantize_isa(packed.data(), absmax.data(), n, bs, type, isa, fast.data());
  for (int64_t i = 0; i < n; ++i) {
    ASSERT_EQ(std::memcmp(&ref[i], &fast[i], sizeof(T)), 0)
        << cpu::cpu_isa_name(isa) << " element " << i << " n=" << n << " bs=" << bs << " scale "
        << absmax[i / bs] << " seed " << seed;
  }
}

// Every ISA this CPU runs (scalar always; AVX2, AVX-512BW where present) equals the reference bit for bit, for
// every output dtype, both code tables and every blocksize, on sizes that are not multiples of the vector
// width or of the block (odd block counts, a partial last block, an odd element count).
TEST(Nf4Cpu, FastDequantizeEqualsReference) {
  const uint32_t base_seed = std::random_device{}();
  std::printf("[ seed ] Nf4Cpu.FastDequantizeEqualsReference base seed %u\n", base_seed);
  SCOPED_TRACE("base seed " + std::to_string(base_seed));
  std::vector<int64_t> sizes = kSizes;
  for (const int64_t extra : {64 * 3 + 17, 64 * 5, 4096 * 3 + 31, 100003}) sizes.push_back(extra);
  int tested = 0;
  for (const cpu::CpuIsa isa : {cpu::CpuIsa::kScalar, cpu::CpuIsa::kAvx2, cpu::CpuIsa::kAvx512}) {
    if (!cpu::cpu_isa_supported(isa)) {
      std::printf("[ skip ] %s: not supported by this CPU\n", cpu::cpu_isa_name(isa));
      continue;
    }
    ++tested;
    uint32_t seed = base_seed;
    for (const QuantType type : {QuantType::kNF4, QuantType::kFP4}) {
      for (const int64_t bs : kBlocksizes) {
        for (const int64_t n : sizes) {
          expect_isa_dequant_equals_reference<float>(isa, type, bs, n, ++seed);
          expect_isa_dequant_equals_reference<c10::BFloat16>(isa, type, bs, n, ++seed);
          expect_isa_dequant_equals_reference<c10::Half>(isa, type, bs, n, ++seed);
        }
      }
    }
  }
  std::printf("[ isa  ] %d instruction sets compared; best here: %s\n", tested,
              cpu::cpu_isa_name(cpu::best_cpu_isa()));
  EXPECT_GE(tested, 1);
}

// Negative control for the comparison above: a fast output that differs from the reference in one element
// by one unit in the last place is caught.
TEST(Nf4Cpu, NegativeControlOneUlpDequantDifferenceIsDetected) {
  const int64_t n = 4097, bs = 64;
  std::mt19937 rng(12345);
  std::vector<uint8_t> packed((n + 1) / 2);
  for (auto& b : packed) b = static_cast<uint8_t>(rng() & 0xFF);
  std::vector<float> absmax((n + bs - 1) / bs, 0.37f);
  std::vector<c10::BFloat16> ref(n), fast(n);
  cpu::dequantize_reference(packed.data(), absmax.data(), n, bs, QuantType::kNF4, ref.data());
  cpu::dequantize_fast(packed.data(), absmax.data(), n, bs, QuantType::kNF4, fast.data());
  ASSERT_EQ(std::memcmp(ref.data(), fast.data(), n * sizeof(c10::BFloat16)), 0);
  fast[4000].x ^= 1;
  EXPECT_NE(std::memcmp(ref.data(), fast.data(), n * sizeof(c10::BFloat16)), 0);
}

// The fused nested-scale decode equals dequantize_absmax's tensor ops (the spec of bnb's two roundings).
TEST(Nf4Cpu, NestedAbsmaxDecodeEqualsTensorOps) {
  const uint64_t seed = std::random_device{}();
  std::printf("[ seed ] Nf4Cpu.NestedAbsmaxDecodeEqualsTensorOps seed %llu\n", static_cast<unsigned long long>(seed));
  SCOPED_TRACE("seed " + std::to_string(seed));
  at::manual_seed(seed);
  for (const int64_t numel : {64 * 255 + 3, 64 * 256, 64 * 257, 64 * 1000 + 1}) {
    const at::Tensor w = at::randn({numel}) * (at::rand({numel}) + 0.01);
    const QuantState s = qtrain::ops::quantize_4bit(w, QuantParams{QuantType::kNF4, 64, true});
    const at::Tensor expect = qtrain::ops::dequantize_absmax(s);
    at::Tensor got = at::empty_like(expect);
    cpu::decode_nested_absmax(s.absmax.data_ptr<uint8_t>(), s.absmax.numel(), s.nested_absmax.data_ptr<float>(),
                              s.nested_quant_map.data_ptr<float>(), s.nested_offset, got.data_ptr<float>());
    ASSERT_TRUE(at::equal(expect, got)) << "numel " << numel;
  }
}

TEST(Nf4Cpu, TensorDequantizeEqualsLibtorchFallback) {
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  at::manual_seed(seed);
  for (const bool dq : {true, false}) {
    for (const QuantType type : {QuantType::kNF4, QuantType::kFP4}) {
      for (const int64_t bs : {32, 64, 4096}) {
        const at::Tensor w = at::randn({37, 129});  // n = 4773: odd, not a multiple of 64 or 256
        const QuantState s = qtrain::ops::quantize_4bit(w, QuantParams{type, bs, dq});
        for (const at::ScalarType t : {at::kFloat, at::kBFloat16, at::kHalf}) {
          const at::Tensor a = qtrain::ops::dequantize_4bit(s, t);
          const at::Tensor b = qtrain::ops::dequantize_4bit_fallback(s, t);
          ASSERT_EQ(a.sizes(), w.sizes());
          ASSERT_TRUE(at::equal(a, b)) << "bs=" << bs << " dq=" << dq << " dtype " << t << " max diff "
                                       << (a.to(at::kFloat) - b.to(at::kFloat)).abs().max().item<float>();
        }
      }
    }
  }
}

// dequantize_4bit_out writes what dequantize_4bit returns, into a reused (poisoned) buffer; wrong buffers throw.
TEST(Nf4Cpu, DequantizeOutEqualsDequantize) {
  const uint64_t seed = std::random_device{}();
  std::printf("[ seed ] Nf4Cpu.DequantizeOutEqualsDequantize seed %llu\n", static_cast<unsigned long long>(seed));
  at::manual_seed(seed);
  for (const bool dq : {true, false}) {
    const at::Tensor w = at::randn({37, 129});
    const QuantState s = qtrain::ops::quantize_4bit(w, QuantParams{QuantType::kFP4, 64, dq});
    for (const at::ScalarType t : {at::kFloat, at::kBFloat16, at::kHalf}) {
      at::Tensor out = at::full({37 * 129}, std::numeric_limits<float>::quiet_NaN(), t);
      for (int rep = 0; rep < 2; ++rep) {
        qtrain::ops::dequantize_4bit_out(s, out);
        ASSERT_TRUE(at::equal(out.view({37, 129}), qtrain::ops::dequantize_4bit(s, t))) << "dq=" << dq << " " << t;
      }
    }
    at::Tensor small = at::empty({10});
    EXPECT_THROW(qtrain::ops::dequantize_4bit_out(s, small), c10::Error);
    at::Tensor strided = at::empty({129, 37}).t();
    EXPECT_THROW(qtrain::ops::dequantize_4bit_out(s, strided), c10::Error);
    at::Tensor ints = at::empty({37, 129}, at::kInt);
    EXPECT_THROW(qtrain::ops::dequantize_4bit_out(s, ints), c10::Error);
  }
}

// Round-trip bound. Each code is the nearest table entry to x/absmax (ties to the lower one), so
// |x - deq(x)| <= absmax * (largest half-gap between adjacent codes): NF4 0.5*(1-0.6961928) = 0.1519036 (between -1 and
// -0.696, the widest gap),
// FP4 0.5*(1-0.6666667) = 0.1666667 (formats.md §1.1-§1.2), plus float32 rounding of the product
// (2^-23 relative). Double quant adds the error of the decoded absmax, measured separately below.
TEST(Nf4Cpu, RoundTripErrorWithinHalfGap) {
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  at::manual_seed(seed);
  for (const QuantType type : {QuantType::kNF4, QuantType::kFP4}) {
    const double half_gap = type == QuantType::kNF4 ? 0.1519036 : 0.1666667;
    for (const int64_t bs : kBlocksizes) {
      const at::Tensor w = at::randn({3, 1001}) * at::rand({3, 1}) * 100;
      const QuantState s = qtrain::ops::quantize_4bit(w, QuantParams{type, bs, false});
      const at::Tensor d = qtrain::ops::dequantize_4bit(s, at::kFloat);
      const int64_t n = w.numel();
      const at::Tensor scale = s.absmax.repeat_interleave(bs).slice(0, 0, n).reshape(w.sizes());
      const at::Tensor excess = (w - d).abs() - scale * (half_gap * (1 + 1e-6));
      EXPECT_LE(excess.max().item<double>(), 0.0) << "bs=" << bs;
    }
  }
}

// The 8-bit scale code is the LUT bin's nearest code, not x's: the bin is 2/65535 wide and the widest gap of
// the dynamic map is 0.0140625 (near ±1, §1.7), so |decoded - absmax| <= absmax2 * (0.0140625/2 + 2/65535).
TEST(Nf4Cpu, DoubleQuantScaleErrorBounded) {
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  at::manual_seed(seed);
  const at::Tensor w = at::randn({1000, 70}) * (at::rand({1000, 1}) + 0.01);
  const QuantState dq = qtrain::ops::quantize_4bit(w, QuantParams{QuantType::kNF4, 64, true});
  const QuantState plain = qtrain::ops::quantize_4bit(w, QuantParams{QuantType::kNF4, 64, false});
  const at::Tensor decoded = qtrain::ops::dequantize_absmax(dq);
  const at::Tensor a2 = dq.nested_absmax.repeat_interleave(256).slice(0, 0, decoded.numel());
  const at::Tensor excess = (decoded - plain.absmax).abs() - a2 * (0.0140625 / 2 + 2.0 / 65535) * (1 + 1e-5);
  EXPECT_LE(excess.max().item<double>(), 0.0);
  EXPECT_TRUE(at::equal(dq.packed, plain.packed)) << "the 4-bit codes do not depend on double quant";
  EXPECT_NEAR(dq.nested_offset, plain.absmax.mean().item<float>(), 0.0f);
}

TEST(Nf4Cpu, AllZeroBlockPacksAsCodeOfZeroAndDequantizesToZero) {
  at::Tensor w = at::randn({4, 64});
  w.select(0, 2).zero_();
  const QuantState nf4 = qtrain::ops::quantize_4bit(w, QuantParams{QuantType::kNF4, 64, false});
  const QuantState fp4 = qtrain::ops::quantize_4bit(w, QuantParams{QuantType::kFP4, 64, false});
  // bnb CPU: 0 * (1/1e-38) = 0 -> NF4 code 7 (byte 0x77), FP4 code 0; bnb CUDA would store 0x00 (formats.md §1.3).
  EXPECT_TRUE(at::all(nf4.packed.slice(0, 64, 96) == 0x77).item<bool>());
  EXPECT_TRUE(at::all(fp4.packed.slice(0, 64, 96) == 0x00).item<bool>());
  EXPECT_EQ(nf4.absmax[2].item<float>(), 0.0f);
  EXPECT_TRUE(at::all(qtrain::ops::dequantize_4bit(nf4, at::kFloat).select(0, 2) == 0).item<bool>());
  // A partial all-zero last block stores the clamped absmax, as bnb does.
  const QuantState tail = qtrain::ops::quantize_4bit(at::zeros({65}), QuantParams{QuantType::kNF4, 64, false});
  EXPECT_EQ(tail.absmax[1].item<float>(), qtrain::ops::nf4_math::kAbsmaxFloor);
  EXPECT_EQ(tail.packed[32].item<uint8_t>(), 0x77) << "odd n pads with the code of 0.0";
}

TEST(Nf4Cpu, SingleElementAndBf16Input) {
  const at::Tensor w = at::full({1}, -3.5, at::kBFloat16);
  const QuantState s = qtrain::ops::quantize_4bit(w, QuantParams{QuantType::kNF4, 64, true});
  EXPECT_EQ(s.packed.numel(), 1);
  EXPECT_EQ(s.packed[0].item<uint8_t>(), 0x07) << "-1.0 is code 0, the pad nibble is code 7";
  EXPECT_EQ(qtrain::ops::dequantize_4bit(s, at::kBFloat16).item<float>(), -3.5f);
  EXPECT_EQ(s.dtype, at::kBFloat16);
}

// ---- negative controls ----

TEST(Nf4Cpu, NegativeControlCorruptedByteIsDetected) {
  const at::Tensor w = at::randn({256});
  QuantState s = qtrain::ops::quantize_4bit(w, QuantParams{QuantType::kNF4, 64, true});
  const at::Tensor good = qtrain::ops::dequantize_4bit(s, at::kFloat);
  s.packed[17] = static_cast<uint8_t>(s.packed[17].item<uint8_t>() ^ 0x10);
  const at::Tensor bad = qtrain::ops::dequantize_4bit(s, at::kFloat);
  EXPECT_FALSE(at::equal(good, bad)) << "flipping a code bit must change the output (the comparison can fail)";
}

TEST(Nf4Cpu, RejectsInvalidInputsWithMessages) {
  const auto expect_throw = [](const std::function<void()>& f, const std::string& needle) {
    try {
      f();
      ADD_FAILURE() << "expected an error mentioning '" << needle << "'";
    } catch (const c10::Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_throw([] { qtrain::ops::quantize_4bit(at::randn({64}), QuantParams{QuantType::kNF4, 48, true}); },
               "blocksize must be one of");
  expect_throw([] { qtrain::ops::quantize_4bit(at::randn({64}), QuantParams{QuantType::kNF4, 8192, true}); },
               "found 8192");
  expect_throw([] { qtrain::ops::quantize_4bit(at::ones({64}, at::kInt), {}); }, "tensor w must be float32");
  expect_throw([] { qtrain::ops::quantize_4bit(at::empty({0}), {}); }, "at least one element");
  expect_throw(
      [] {
        at::Tensor w = at::randn({300});
        w[200] = std::numeric_limits<float>::infinity();
        qtrain::ops::quantize_4bit(w, {});
      },
      "block 3");
  expect_throw(
      [] {
        at::Tensor w = at::randn({300});
        w[129] = std::numeric_limits<float>::quiet_NaN();  // NaN mid-block: must survive the later elements
        qtrain::ops::quantize_4bit(w, QuantParams{QuantType::kFP4, 64, false});
      },
      "block 2");
  expect_throw(
      [] {
        QuantState s = qtrain::ops::quantize_4bit(at::randn({300}), {});
        s.packed = s.packed.slice(0, 0, 149);
        qtrain::ops::dequantize_4bit(s, at::kFloat);
      },
      "packed must be uint8 with ceil(n/2) = 150");
  expect_throw(
      [] {
        QuantState s = qtrain::ops::quantize_4bit(at::randn({300}), {});
        s.absmax = s.absmax.to(at::kFloat);
        qtrain::ops::dequantize_4bit(s, at::kFloat);
      },
      "absmax must be uint8 with double quantization");
  expect_throw(
      [] {
        const QuantState s = qtrain::ops::quantize_4bit(at::randn({300}), {});
        qtrain::ops::dequantize_4bit(s, at::kInt);
      },
      "out_dtype must be");
}

// The CUDA quantizer's table-free nested code (binary search over the map's midpoints, nf4_math.h) equals the
// CPU's 65536-entry table for every bin; a one-ulp nudge of one midpoint changes some bin (negative control).
TEST(Nf4Cpu, NestedCodeSearchEqualsLutForEveryBin) {
  const at::Tensor dyn = qtrain::ops::signed_dynamic_map();
  const std::vector<uint8_t> lut = cpu::build_nested_lut(dyn.data_ptr<float>());
  const float* d = dyn.data_ptr<float>();
  std::vector<float> mid(255);
  for (int k = 0; k < 255; ++k) mid[k] = qtrain::ops::nf4_math::nested_midpoint(d[k], d[k + 1]);
  int64_t mismatches = 0;
  for (int bin = 0; bin < qtrain::ops::nf4_math::kNestedLutSize; ++bin) {
    mismatches += qtrain::ops::nf4_math::nested_code_of_bin(bin, mid.data()) != lut[bin];
  }
  EXPECT_EQ(mismatches, 0);
  // Negative control: move the midpoint between codes 130 and 131 up past the bin just above it.
  std::vector<float> moved = mid;
  moved[130] = std::nextafter(moved[130], 2.0f) + 1e-4f;
  int64_t changed = 0;
  for (int bin = 0; bin < qtrain::ops::nf4_math::kNestedLutSize; ++bin) {
    changed += qtrain::ops::nf4_math::nested_code_of_bin(bin, moved.data()) != lut[bin];
  }
  EXPECT_GT(changed, 0);
}

// The dynamic map is a constant of the process: each call returns its own copy, and on a device the same values.
TEST(Nf4Cpu, SignedDynamicMapIsAFreshCopyEachCall) {
  at::Tensor a = qtrain::ops::signed_dynamic_map();
  const at::Tensor b = qtrain::ops::signed_dynamic_map();
  ASSERT_EQ(a.numel(), 256);
  EXPECT_TRUE(at::equal(a, b));
  a.zero_();
  EXPECT_TRUE(at::equal(qtrain::ops::signed_dynamic_map(), b));
  EXPECT_TRUE(at::equal(qtrain::ops::signed_dynamic_map(at::kCPU), b));
  EXPECT_TRUE(at::equal(qtrain::ops::code_table(QuantType::kNF4, at::kCPU), qtrain::ops::code_table(QuantType::kNF4)));
}

// ---- CUDA vs CPU reference ----

TEST(Nf4Gpu, CudaKernelsEqualCpuReference) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  at::manual_seed(seed);
  const std::vector<int64_t> sizes = {1, 3, 33, 257, 4097, 12345, 1 << 20, (1 << 20) + 7};
  for (const QuantType type : {QuantType::kNF4, QuantType::kFP4}) {
    for (const int64_t bs : kBlocksizes) {
      for (const int64_t n : sizes) {
        for (const at::ScalarType in_t : {at::kFloat, at::kBFloat16, at::kHalf}) {
          at::Tensor w = (at::randn({n}) * 3).to(in_t);
          if (n > 100) w.slice(0, 0, n / 3).zero_();
          const QuantParams p{type, bs, /*double_quant=*/n % 2 == 1 || bs == 64};
          const QuantState c = qtrain::ops::quantize_4bit(w, p);
          const QuantState g = qtrain::ops::quantize_4bit(w.cuda(), p);
          const std::string where = "n=" + std::to_string(n) + " bs=" + std::to_string(bs) + " in " +
                                    std::string(c10::toString(in_t));
          ASSERT_TRUE(at::equal(c.packed, g.packed.cpu())) << "packed " << where;
          ASSERT_TRUE(at::equal(c.absmax, g.absmax.cpu())) << "absmax " << where;
          ASSERT_EQ(bits(c.nested_offset), bits(g.nested_offset)) << where;
          if (p.double_quant) {
            ASSERT_TRUE(at::equal(c.nested_absmax, g.nested_absmax.cpu())) << where;
          }
          for (const at::ScalarType out_t : {at::kFloat, at::kBFloat16, at::kHalf}) {
            const at::Tensor dc = qtrain::ops::dequantize_4bit(c, out_t);
            const at::Tensor dg = qtrain::ops::dequantize_4bit(g, out_t);
            const at::Tensor df = qtrain::ops::dequantize_4bit_fallback(g, out_t);
            ASSERT_TRUE(at::equal(dc, dg.cpu())) << "dequant kernel vs CPU " << where << " out " << out_t;
            ASSERT_TRUE(at::equal(df.cpu(), dg.cpu())) << "dequant kernel vs libtorch fallback " << where;
          }
        }
      }
    }
  }
  // Unaligned packed storage takes the scalar path and must agree too.
  const QuantState c = qtrain::ops::quantize_4bit(at::randn({4096}), QuantParams{QuantType::kNF4, 64, true});
  QuantState g = c;
  const at::Tensor buf = at::empty({c.packed.numel() + 1}, at::TensorOptions().dtype(at::kByte).device(at::kCUDA));
  buf.slice(0, 1).copy_(c.packed);
  g.packed = buf.slice(0, 1);
  g.absmax = c.absmax.cuda();
  g.nested_absmax = c.nested_absmax.cuda();
  g.nested_quant_map = c.nested_quant_map.cuda();
  EXPECT_TRUE(at::equal(qtrain::ops::dequantize_4bit(c, at::kBFloat16),
                        qtrain::ops::dequantize_4bit(g, at::kBFloat16).cpu()));
}

// The CPU state moved to the GPU: the kernel's input is exactly the reference's, whatever the GPU quantizer does.
QuantState to_cuda(const QuantState& c) {
  QuantState g = c;
  g.packed = c.packed.cuda();
  g.absmax = c.absmax.cuda();
  g.quant_map = c.quant_map.cuda();
  if (c.double_quant()) {
    g.nested_absmax = c.nested_absmax.cuda();
    g.nested_quant_map = c.nested_quant_map.cuda();
  }
  return g;
}

// The dequantize kernel on awkward shapes, against the CPU reference bit for bit: every blocksize, numel not a
// multiple of a 16-byte chunk (8 bf16/fp16 or 4 fp32 outputs), of a block or of a warp's tile (128 chunks), odd
// block counts, 2-D shapes, with and without double quant, and with the vector path off through a packed
// buffer at every byte offset 1..3.
TEST(Nf4Gpu, DequantizeAwkwardShapesEqualCpuReference) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  at::manual_seed(seed);
  const std::vector<std::vector<int64_t>> shapes = {
      {1}, {2}, {5}, {7}, {9}, {15}, {17}, {31}, {64 * 3}, {64 * 3 + 1}, {1023}, {1024}, {1025}, {4 * 1024 + 4},
      {11, 13}, {3, 4096 + 8}, {257, 255}, {5, 32 * 1024 + 3}, {4096 * 3 + 7}, {(1 << 16) * 3 + 12}};
  for (const QuantType type : {QuantType::kNF4, QuantType::kFP4}) {
    for (const int64_t bs : kBlocksizes) {
      for (const auto& shape : shapes) {
        for (const bool dq : {true, false}) {
          const at::Tensor w = at::randn(shape) * 2;
          const QuantState c = qtrain::ops::quantize_4bit(w, QuantParams{type, bs, dq});
          const QuantState g = to_cuda(c);
          std::string where = "shape " + c10::str(at::IntArrayRef(shape)) + " bs=" + std::to_string(bs) +
                              (dq ? " dq" : "") + (type == QuantType::kFP4 ? " fp4" : " nf4");
          for (const at::ScalarType out_t : {at::kFloat, at::kBFloat16, at::kHalf}) {
            const at::Tensor ref = qtrain::ops::dequantize_4bit(c, out_t);
            ASSERT_TRUE(at::equal(ref, qtrain::ops::dequantize_4bit(g, out_t).cpu())) << where << " out " << out_t;
          }
          if (bs != 64 && bs != 4096) continue;  // misaligned packed storage: a few blocksizes are enough
          for (int64_t offset = 1; offset <= 3; ++offset) {
            QuantState m = g;
            const at::Tensor buf = at::empty({c.packed.numel() + offset}, g.packed.options());
            buf.slice(0, offset).copy_(g.packed);
            m.packed = buf.slice(0, offset);
            for (const at::ScalarType out_t : {at::kFloat, at::kBFloat16}) {
              ASSERT_TRUE(at::equal(qtrain::ops::dequantize_4bit(c, out_t), qtrain::ops::dequantize_4bit(m, out_t).cpu()))
                  << where << " packed at byte offset " << offset << " out " << out_t;
            }
          }
        }
      }
    }
  }
}

// dequantize_4bit_out on the GPU writes straight into the caller's buffer, including a view at any element
// offset (the element-wise path when not 16-byte aligned), and leaves the elements around it untouched.
TEST(Nf4Gpu, DequantizeOutIntoMisalignedViews) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  at::manual_seed(seed);
  for (const int64_t n : {int64_t{1}, int64_t{13}, int64_t{4096}, int64_t{4096 * 9 + 5}}) {
    const QuantState c = qtrain::ops::quantize_4bit(at::randn({n}), QuantParams{QuantType::kNF4, 64, true});
    const QuantState g = to_cuda(c);
    for (const at::ScalarType out_t : {at::kFloat, at::kBFloat16, at::kHalf}) {
      const at::Tensor ref = qtrain::ops::dequantize_4bit(c, out_t);
      for (int64_t offset = 0; offset <= 8; ++offset) {
        at::Tensor buf = at::full({n + offset + 3}, 7.0, at::TensorOptions().dtype(out_t).device(at::kCUDA));
        at::Tensor view = buf.slice(0, offset, offset + n);
        qtrain::ops::dequantize_4bit_out(g, view);
        const at::Tensor host = buf.cpu();
        ASSERT_TRUE(at::equal(host.slice(0, offset, offset + n), ref))
            << "n=" << n << " out " << out_t << " at element offset " << offset;
        EXPECT_TRUE(host.slice(0, 0, offset).eq(7.0).all().item<bool>()) << "wrote before the view";
        EXPECT_TRUE(host.slice(0, offset + n).eq(7.0).all().item<bool>()) << "wrote after the view";
      }
    }
  }
}


// Dequantize (both entry points) never waits for the device; quantize waits exactly once, for the fp32 scales
// (the finite check and the CPU-identical offset: nf4.h), with or without double quant.
TEST(Nf4Gpu, SynchronisationsOfQuantizeAndDequantize) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
#if defined(QTRAIN_WITH_CUDA)
  const at::Tensor w = at::randn({256, 320}, at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA));
  (void)qtrain::ops::quantize_4bit(w, {});  // warm-up: pinned host pool, kernels loaded
  for (const bool dq : {true, false}) {
    QuantState s;
    {
      qtrain::SyncCounter count;
      s = qtrain::ops::quantize_4bit(w, QuantParams{QuantType::kNF4, 64, dq});
      EXPECT_EQ(count.count(), 1u) << "quantize_4bit, double quant " << dq << "\n" << count.report();
    }
    at::Tensor out = at::empty({256, 320}, w.options());
    {
      qtrain::SyncCounter count;
      (void)qtrain::ops::dequantize_4bit(s, at::kBFloat16);
      qtrain::ops::dequantize_4bit_out(s, out);
      EXPECT_EQ(count.count(), 0u) << "dequantize, double quant " << dq << "\n" << count.report();
    }
  }
#endif
}

}  // namespace
