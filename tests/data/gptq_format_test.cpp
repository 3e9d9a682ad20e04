// GPTQ v1 packing (formats.md §5.6): the bit layout by hand, round trips on awkward shapes (in not a
// multiple of the group size, act-order g_idx, 8 bits), shapes the layout cannot hold, every malformed
// tensor named on read, the quantization_config written and parsed back (v2 refused).
#include <gtest/gtest.h>

#include <cstdint>
#include <random>

#include <nlohmann/json.hpp>

#include "data/error.h"
#include "data/io/gptq_format.h"
#include "data/io/hf_config.h"

namespace qtrain {
namespace {

// A random GptqLinear with valid values: codes in [0, 2^bits), zeros in [1, 2^bits] (v1-storable), positive
// scales, and g_idx either k/g or a random grouping with every group used.
GptqLinear random_linear(int64_t out, int64_t in, int bits, int64_t group_size, bool shuffled, uint32_t seed) {
  at::Generator gen = at::detail::createCPUGenerator(seed);
  const int64_t groups = gptq_num_groups(in, group_size);
  const int64_t maxq = (1 << bits) - 1;
  GptqLinear q;
  q.bits = bits;
  q.codes = at::randint(0, maxq + 1, {out, in}, gen, at::kLong).to(at::kByte);
  q.zeros = at::randint(1, maxq + 2, {groups, out}, gen, at::kLong).to(at::kInt);
  q.scales = at::rand({groups, out}, gen, at::kFloat) + 0.01;
  at::Tensor g = at::floor_divide(at::arange(in, at::kLong), gptq_group_width(in, group_size));
  if (shuffled) g = g.index_select(0, at::randperm(in, gen, at::kLong));
  q.g_idx = g.to(at::kInt);
  return q;
}

TensorGetter getter(const std::map<std::string, at::Tensor>& t) {
  return [&t](const std::string& name) {
    auto it = t.find(name);
    return it == t.end() ? at::Tensor() : it->second;
  };
}

TEST(GptqFormat, BitLayoutByHand) {
  // codes[n, k] = (3n + k) % 16 for an 8x16 linear, one group, true zero 8 (stored 7).
  GptqLinear q;
  q.bits = 4;
  q.codes = at::empty({8, 16}, at::kByte);
  for (int n = 0; n < 8; ++n)
    for (int k = 0; k < 16; ++k) q.codes[n][k] = (3 * n + k) % 16;
  q.scales = at::ones({1, 8});
  q.zeros = at::full({1, 8}, 8, at::kInt);
  q.g_idx = at::zeros({16}, at::kInt);
  const auto t = pack_gptq_v1("m", q);
  const at::Tensor qw = t.at("m.qweight");
  ASSERT_EQ(qw.scalar_type(), at::kInt);
  ASSERT_EQ(qw.sizes(), (at::IntArrayRef{2, 8}));
  for (int r = 0; r < 2; ++r)
    for (int n = 0; n < 8; ++n) {
      uint32_t word = 0;
      for (int j = 0; j < 8; ++j) word |= static_cast<uint32_t>((3 * n + 8 * r + j) % 16) << (4 * j);  // k = 8r + j
      EXPECT_EQ(static_cast<uint32_t>(qw[r][n].item<int32_t>()), word) << "r " << r << " n " << n;
    }
  const at::Tensor qz = t.at("m.qzeros");
  ASSERT_EQ(qz.sizes(), (at::IntArrayRef{1, 1}));
  EXPECT_EQ(qz[0][0].item<int32_t>(), 0x77777777);  // symmetric 4-bit: 2004318071 (formats.md §5.6)
  EXPECT_EQ(t.at("m.scales").scalar_type(), at::kHalf);
  EXPECT_EQ(t.at("m.g_idx").scalar_type(), at::kInt);
}

TEST(GptqFormat, EightBitSymmetricZerosWord) {
  GptqLinear q = random_linear(8, 8, 8, -1, false, 1);
  q.zeros.fill_(128);
  const auto t = pack_gptq_v1("m", q);
  EXPECT_EQ(t.at("m.qweight").sizes(), (at::IntArrayRef{2, 8}));
  EXPECT_EQ(t.at("m.qzeros").sizes(), (at::IntArrayRef{1, 2}));
  EXPECT_TRUE((t.at("m.qzeros") == 0x7F7F7F7F).all().item<bool>());
}

TEST(GptqFormat, RoundTripAwkwardShapes) {
  const uint32_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  struct Case { int64_t out, in; int bits; int64_t g; bool shuffled; };
  // in 200 with g 64: 4 groups, the last of 8 columns; g -1; g > in (one group); act-order g_idx; 8 bits.
  const Case cases[] = {{24, 200, 4, 64, false}, {24, 200, 4, 64, true}, {40, 72, 4, -1, false},
                        {8, 64, 4, 128, false},  {16, 96, 8, 32, true},  {12, 20, 8, 7, true}};
  uint32_t s = seed;
  for (const Case& c : cases) {
    SCOPED_TRACE(std::to_string(c.out) + "x" + std::to_string(c.in) + " bits " + std::to_string(c.bits) + " g " +
                 std::to_string(c.g));
    const GptqLinear q = random_linear(c.out, c.in, c.bits, c.g, c.shuffled, ++s);
    const auto t = pack_gptq_v1("p", q);
    const GptqLinear r = unpack_gptq_v1(getter(t), "mem", "p", c.out, c.in, c.bits, c.g);
    EXPECT_TRUE(at::equal(r.codes, q.codes));
    EXPECT_TRUE(at::equal(r.zeros, q.zeros));
    EXPECT_TRUE(at::equal(r.g_idx, q.g_idx));
    EXPECT_TRUE(at::equal(r.scales, q.scales.to(at::kHalf).to(at::kFloat)));  // stored in fp16
    // Dequantization through g_idx, against the formula element by element.
    const at::Tensor d = r.dequantize(at::kFloat);
    for (int64_t n = 0; n < c.out; n += 5)
      for (int64_t k = 0; k < c.in; k += 3) {
        const int64_t g = r.g_idx[k].item<int64_t>();
        const float want = r.scales[g][n].item<float>() * (r.codes[n][k].item<float>() - r.zeros[g][n].item<float>());
        ASSERT_EQ(d[n][k].item<float>(), want) << n << "," << k;
      }
  }
}

std::string usage_error(const std::function<void()>& f) {
  try {
    f();
  } catch (const UsageError& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(GptqFormat, ShapesTheLayoutCannotHold) {
  // qzeros packs along out: out 12 does not fill 4-bit words.
  EXPECT_NE(usage_error([] { pack_gptq_v1("x.proj", random_linear(12, 64, 4, 32, false, 2)); }).find("out_features must be a multiple of 8"),
            std::string::npos);
  EXPECT_NE(usage_error([] { pack_gptq_v1("x.proj", random_linear(16, 20, 4, 32, false, 3)); }).find("in_features must be a multiple of 8"),
            std::string::npos);
  // A zero of 0 (stored -1) is the v1 limitation: refused, not written corrupt.
  GptqLinear q = random_linear(8, 8, 4, -1, false, 4);
  q.zeros[0][3] = 0;
  EXPECT_NE(usage_error([&] { pack_gptq_v1("x.proj", q); }).find("x.proj: 1 zero point(s) outside [1, 16]"), std::string::npos);
  q = random_linear(8, 8, 4, -1, false, 5);
  q.bits = 3;
  EXPECT_NE(usage_error([&] { pack_gptq_v1("x.proj", q); }).find("bits must be 4 or 8"), std::string::npos);
}

std::string input_error(const std::map<std::string, at::Tensor>& t, int64_t out = 16, int64_t in = 64) {
  try {
    unpack_gptq_v1(getter(t), "dir/model.safetensors", "l", out, in, 4, 32);
  } catch (const InputError& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(GptqFormat, MalformedTensorsNamed) {
  const auto good = pack_gptq_v1("l", random_linear(16, 64, 4, 32, true, 6));
  EXPECT_EQ(input_error(good), "(no error)");
  auto t = good;
  t.erase("l.qzeros");
  EXPECT_EQ(input_error(t), "dir/model.safetensors: GPTQ tensor 'l.qzeros' is missing (expected shape [2, 2])");
  t = good;
  t["l.qweight"] = t["l.qweight"].to(at::kFloat);
  EXPECT_EQ(input_error(t), "dir/model.safetensors: GPTQ tensor 'l.qweight' has dtype Float, expected int32");
  t = good;
  t["l.scales"] = t["l.scales"].narrow(0, 0, 1);
  EXPECT_NE(input_error(t).find("GPTQ tensor 'l.scales' has shape [1, 16], expected [2, 16]"), std::string::npos);
  t = good;
  t["l.g_idx"] = t["l.g_idx"].clone();
  t["l.g_idx"][5] = 2;
  EXPECT_EQ(input_error(t), "dir/model.safetensors: GPTQ tensor 'l.g_idx' holds group 2, outside [0, 2)");
  t = good;
  t["l.scales"] = t["l.scales"].clone();
  t["l.scales"][1][1] = std::numeric_limits<float>::infinity();
  EXPECT_NE(input_error(t).find("'l.scales' holds a non-finite value"), std::string::npos);
  // config.json implies another shape than the file holds.
  EXPECT_NE(input_error(good, 32, 64).find("'l.qweight' has shape [8, 16], expected [8, 32]"), std::string::npos);
  // Without g_idx (old AutoGPTQ, no act-order) the grouping is k / group_size.
  t = good;
  t.erase("l.g_idx");
  const GptqLinear r = unpack_gptq_v1(getter(t), "mem", "l", 16, 64, 4, 32);
  EXPECT_TRUE(at::equal(r.g_idx, (at::floor_divide(at::arange(64, at::kInt), 32)).to(at::kInt)));
}

TEST(GptqFormat, QuantizationConfigWrittenAndParsed) {
  GptqSettings s;
  s.bits = 8;
  s.group_size = 64;
  s.sym = false;
  s.desc_act = true;
  s.damp_percent = 0.05;
  const nlohmann::ordered_json q = gptq_quantization_config(s);
  EXPECT_EQ(q["quant_method"], "gptq");
  EXPECT_EQ(q["checkpoint_format"], "gptq");
  EXPECT_EQ(q["bits"], 8);
  EXPECT_EQ(q["group_size"], 64);
  EXPECT_EQ(q["desc_act"], true);
  EXPECT_EQ(q["sym"], false);
  EXPECT_EQ(q["static_groups"], false);
  EXPECT_EQ(q["true_sequential"], true);
  EXPECT_DOUBLE_EQ(q["damp_percent"].get<double>(), 0.05);

  nlohmann::json cfg = {{"model_type", "llama"},  {"vocab_size", 100},      {"hidden_size", 64},
                        {"intermediate_size", 128}, {"num_hidden_layers", 1}, {"num_attention_heads", 8}};
  cfg["quantization_config"] = q;
  const ModelConfig c = parse_model_config_text(cfg.dump(), "m/config.json");
  ASSERT_TRUE(c.gptq.has_value());
  EXPECT_FALSE(c.bnb_4bit.has_value());
  EXPECT_EQ(c.gptq->bits, 8);
  EXPECT_EQ(c.gptq->group_size, 64);
  EXPECT_FALSE(c.gptq->sym);
  EXPECT_TRUE(c.gptq->desc_act);

  auto err = [&](const char* key, const nlohmann::json& v) {
    nlohmann::json bad = cfg;
    bad["quantization_config"][key] = v;
    try {
      parse_model_config_text(bad.dump(), "m/config.json");
    } catch (const InputError& e) {
      return std::string(e.what());
    }
    return std::string("(no error)");
  };
  EXPECT_NE(err("checkpoint_format", "gptq_v2").find("m/config.json: key 'quantization_config.checkpoint_format': only GPTQ v1"),
            std::string::npos);
  EXPECT_NE(err("checkpoint_format", "marlin").find("found 'marlin'"), std::string::npos);
  EXPECT_NE(err("bits", 3).find("'quantization_config.bits': only 4- and 8-bit"), std::string::npos);
  EXPECT_NE(err("group_size", 0).find("'quantization_config.group_size'"), std::string::npos);
  EXPECT_NE(err("group_size", nullptr).find("'quantization_config.group_size': missing"), std::string::npos);
  EXPECT_NE(err("sym", "yes").find("'quantization_config.sym': expected true or false"), std::string::npos);
}

}  // namespace
}  // namespace qtrain
