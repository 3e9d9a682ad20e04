// GPTQ and RTN (export/gptq.h, formats.md §5.1-5.4): the quantizer grid against hand-computed values,
// RTN == GPTQ when H is the identity (no error feedback), GPTQ below RTN in the layer-output error on
// correlated inputs and on every linear of the real tiny model fed its own hidden states, act-order and
// static-group g_idx, 8 bits, damping retries and dead columns, the Hessian accumulator; a GPTQ model
// directory loads (dense and NF4) and `qtrain inspect` reads it.
#include <gtest/gtest.h>

#include <ATen/CPUGeneratorImpl.h>
#include <sys/wait.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <random>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/error.h"
#include "data/io/gptq_format.h"
#include "data/io/model_writer.h"
#include "tests/shared_data.h"
#include "export/gptq.h"
#include "tests/scratch_dir.h"
#include "trainer/model/model.h"

namespace qtrain {
namespace {
namespace fs = std::filesystem;

uint32_t fresh_seed(const char* test) {
  const uint32_t s = std::random_device{}();
  std::cout << test << " seed " << s << "\n";
  return s;
}

at::Tensor row(std::vector<float> v) { return at::tensor(v, at::kFloat).unsqueeze(0); }

std::vector<int64_t> codes_of(const at::Tensor& x, int bits, bool sym) {
  auto [scale, zero] = gptq_grid(x, bits, sym);
  const at::Tensor c = gptq_codes(x, scale, zero, bits).to(at::kLong).reshape({-1});
  return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
}

TEST(RtnGrid, SymmetricHandComputed) {
  // absmax 7.5 → scale 2·7.5/15 = 1, zero 8. Halves round to even: -7.5 → -8 → 0; 2.5 → 2; 3.5 → 4;
  // -0.5 → -0 → 8; 7.5 → 8 → 16, clamped to 15.
  const at::Tensor x = row({-7.5f, 2.5f, 3.5f, -0.5f, 7.5f, 0.f});
  auto [scale, zero] = gptq_grid(x, 4, true);
  EXPECT_FLOAT_EQ(scale.item<float>(), 1.f);
  EXPECT_FLOAT_EQ(zero.item<float>(), 8.f);
  EXPECT_EQ(codes_of(x, 4, true), (std::vector<int64_t>{0, 10, 12, 8, 15, 8}));
  // A row that never goes below zero keeps xmin = 0 (the references' quirk): scale 15/15, zero 8, so
  // 15 saturates at code 15 = +7.
  EXPECT_EQ(codes_of(row({0.f, 1.5f, 15.f}), 4, true), (std::vector<int64_t>{8, 10, 15}));
  // 8 bits: absmax 127.5 → scale 1, zero 128.
  auto [s8, z8] = gptq_grid(row({-127.5f, 3.f}), 8, true);
  EXPECT_FLOAT_EQ(s8.item<float>(), 1.f);
  EXPECT_FLOAT_EQ(z8.item<float>(), 128.f);
  EXPECT_EQ(codes_of(row({-127.5f, 3.f, 127.5f}), 8, true), (std::vector<int64_t>{0, 131, 255}));
}

TEST(RtnGrid, AsymmetricHandComputed) {
  // xmin -2, xmax 13: scale 1, zero round(2) = 2.
  auto [scale, zero] = gptq_grid(row({-2.f, 0.f, 13.f}), 4, false);
  EXPECT_FLOAT_EQ(scale.item<float>(), 1.f);
  EXPECT_FLOAT_EQ(zero.item<float>(), 2.f);
  EXPECT_EQ(codes_of(row({-2.f, 0.f, 13.f, 0.5f, 1.5f}), 4, false), (std::vector<int64_t>{0, 2, 15, 2, 4}));
  // xmin 0 would give zero 0, which v1 cannot store: zero 1 and scale xmax/14 instead.
  auto [s0, z0] = gptq_grid(row({0.f, 1.f, 14.f}), 4, false);
  EXPECT_FLOAT_EQ(z0.item<float>(), 1.f);
  EXPECT_FLOAT_EQ(s0.item<float>(), 1.f);
  EXPECT_EQ(codes_of(row({0.f, 1.f, 14.f}), 4, false), (std::vector<int64_t>{1, 2, 15}));
}

TEST(RtnGrid, AllZeroRow) {
  // xmin = xmax = 0 → [-1, 1]: scale 2/15; sym zero 8; asym zero round(1/(2/15)), which in fp32 is
  // round(7.4999995) = 7 (torch computes the same: the grid is fp32 in the references too).
  for (bool sym : {true, false}) {
    auto [scale, zero] = gptq_grid(at::zeros({2, 5}), 4, sym);
    const int64_t z = sym ? 8 : 7;
    EXPECT_FLOAT_EQ(scale[0].item<float>(), 2.f / 15.f);
    EXPECT_EQ(zero[1].item<float>(), static_cast<float>(z));
    EXPECT_EQ(codes_of(at::zeros({1, 5}), 4, sym), std::vector<int64_t>(5, z));
  }
}

TEST(RtnQuantize, GroupsAndGidx) {
  at::Generator gen = at::detail::createCPUGenerator(fresh_seed("RtnQuantize.GroupsAndGidx"));
  at::Tensor W = at::randn({16, 200}, gen);
  // Every group slice of every row reaches below zero: a slice that does not keeps xmin = 0 in the
  // symmetric grid (the references' quirk, RtnGrid.SymmetricHandComputed) and clamps its top half,
  // which the 8-column last group hits often with random signs.
  for (int64_t k0 : {0, 64, 128, 192}) W.select(1, k0).copy_(-W.select(1, k0).abs() - 0.1);
  GptqSettings s;
  s.group_size = 64;  // 4 groups, the last of 8 columns
  const GptqLinear q = rtn_quantize(W, s);
  EXPECT_EQ(q.scales.sizes(), (at::IntArrayRef{4, 16}));
  EXPECT_TRUE(at::equal(q.g_idx, (at::floor_divide(at::arange(200, at::kLong), 64)).to(at::kInt)));
  // Each group's codes are that slice's own grid.
  auto [s3, z3] = gptq_grid(W.narrow(1, 192, 8), 4, true);
  EXPECT_TRUE(at::equal(q.scales[3], s3));
  EXPECT_TRUE(at::equal(q.codes.narrow(1, 192, 8), gptq_codes(W.narrow(1, 192, 8), s3, z3, 4).to(at::kByte)));
  // Round to nearest: |W - deq| <= scale/2 inside the clamp range (sym rows have absmax at ±7.5·scale).
  const at::Tensor err = (W - q.dequantize(at::kFloat)).abs();
  const at::Tensor half = q.scales.index_select(0, q.g_idx.to(at::kLong)).t() / 2;
  EXPECT_TRUE((err <= half * (1 + 1e-5)).all().item<bool>());
}

// Correlated inputs like an LLM's: a few channels much larger, mixed by a random matrix.
at::Tensor correlated_inputs(int64_t n, int64_t in, at::Generator& gen) {
  const at::Tensor mix = at::eye(in) + 0.5 * at::randn({in, in}, gen) / std::sqrt(static_cast<double>(in));
  const at::Tensor chan = at::exp(1.5 * at::randn({in}, gen));
  return at::randn({n, in}, gen).mm(mix) * chan;
}

at::Tensor hessian_of(const at::Tensor& X) {
  HessianAccumulator acc(X.size(-1), X.device());
  acc.add(X);
  return acc.hessian();
}

TEST(GptqQuantize, IdentityHessianIsRtn) {
  // H = I: damping gives (1+d)·I, whose Cholesky factors and inverse are diagonal with exact zeros off the
  // diagonal, so each error update W1[:, j>i] -= err·Hinv[i, j] subtracts exactly 0: every column is
  // quantized from its original value on the grid of its original group, which is RTN, bit for bit.
  at::Generator gen = at::detail::createCPUGenerator(fresh_seed("GptqQuantize.IdentityHessianIsRtn"));
  const at::Tensor W = at::randn({24, 320}, gen);
  struct Case { int64_t g; bool sym, desc_act, static_groups; int bits; };
  for (const Case c : {Case{128, true, false, false, 4}, Case{32, false, false, false, 4}, Case{-1, true, false, false, 4},
                       Case{64, true, true, false, 4}, Case{48, false, true, true, 4}, Case{96, true, false, false, 8},
                       Case{1000, false, false, false, 4}}) {
    SCOPED_TRACE("g " + std::to_string(c.g) + " sym " + std::to_string(c.sym) + " desc_act " +
                 std::to_string(c.desc_act) + " static " + std::to_string(c.static_groups) + " bits " + std::to_string(c.bits));
    GptqSettings s;
    s.group_size = c.g;
    s.sym = c.sym;
    s.desc_act = c.desc_act;
    s.static_groups = c.static_groups;
    s.bits = c.bits;
    const GptqLinear r = rtn_quantize(W, s);
    const GptqLinear g = gptq_quantize(W, at::eye(320), s);
    EXPECT_TRUE(at::equal(r.codes, g.codes));
    EXPECT_TRUE(at::equal(r.scales, g.scales));
    EXPECT_TRUE(at::equal(r.zeros, g.zeros));
    EXPECT_TRUE(at::equal(r.g_idx, g.g_idx));
  }
}

TEST(GptqQuantize, BeatsRtnOnCorrelatedInputs) {
  // GPTQ is greedy and beats RTN on a typical draw, not on every one: measured on 300 seeds here, the
  // error ratio GPTQ/RTN averages 0.71-0.86 per case but exceeded 1.01 on 3 seeds (1.096 with g128 sym on
  // seed 131598850, 1.012 on seed 129072884, 1.013 at 8 bits on seed 1486207508); the Python reference
  // transcription of fasterquant loses the same way (1000 seeds, 48x320: up to 1.17 without act-order,
  // 1.10 with it, ~0.3% of draws per case above 1.01). A per-draw bound (strict, then 1% since c60e850)
  // failed about 1 run in 100. So each case takes 5 independent draws and the median ratio must be below 1:
  // that fails only if 3 of 5 draws lose (~10·0.006³ ≈ 2e-6 per case), while a GPTQ without (or with a
  // wrong) error feedback, which is RTN or worse on every draw, still fails it.
  const uint32_t seed = fresh_seed("GptqQuantize.BeatsRtnOnCorrelatedInputs");
  constexpr int kDraws = 5;
  struct Draw { at::Tensor W, H; };
  std::vector<Draw> draws;
  for (int d = 0; d < kDraws; ++d) {
    at::Generator gen = at::detail::createCPUGenerator(seed + d);  // draw d is seed + d, rerunnable alone
    const at::Tensor W = at::randn({64, 256}, gen);
    draws.push_back({W, hessian_of(correlated_inputs(2048, 256, gen))});
  }
  struct Case { int64_t g; bool sym, desc_act, static_groups; int bits; };
  for (const Case c : {Case{128, true, false, false, 4}, Case{32, false, false, false, 4}, Case{-1, true, false, false, 4},
                       Case{64, true, true, false, 4}, Case{64, true, true, true, 4}, Case{128, true, false, false, 8}}) {
    GptqSettings s;
    s.group_size = c.g;
    s.sym = c.sym;
    s.desc_act = c.desc_act;
    s.static_groups = c.static_groups;
    s.bits = c.bits;
    std::vector<double> ratios;
    for (int d = 0; d < kDraws; ++d) {
      const at::Tensor& W = draws[d].W;
      const at::Tensor& H = draws[d].H;
      GptqStats st;
      const double e_gptq = hessian_error(W, gptq_quantize(W, H, s, &st).dequantize(at::kFloat), H);
      const double e_rtn = hessian_error(W, rtn_quantize(W, s).dequantize(at::kFloat), H);
      std::printf("  g %5ld sym %d desc_act %d static %d bits %d seed %u: hessian_error GPTQ %.4g RTN %.4g (ratio %.3f), GPTQ loss %.4g\n",
                  static_cast<long>(c.g), c.sym, c.desc_act, c.static_groups, c.bits, seed + d, e_gptq, e_rtn,
                  e_gptq / e_rtn, st.error);
      ratios.push_back(e_gptq / e_rtn);
      EXPECT_EQ(st.retries, 0);
      EXPECT_GT(st.error, 0);
    }
    std::sort(ratios.begin(), ratios.end());
    EXPECT_LT(ratios[kDraws / 2], 1.0) << "median GPTQ/RTN error ratio over " << kDraws << " draws, g " << c.g
                                       << " sym " << c.sym << " desc_act " << c.desc_act << " static "
                                       << c.static_groups << " bits " << c.bits;
  }
}

TEST(GptqQuantize, ActOrderGidx) {
  at::Generator gen = at::detail::createCPUGenerator(fresh_seed("GptqQuantize.ActOrderGidx"));
  const int64_t in = 192, g = 64;
  const at::Tensor W = at::randn({16, in}, gen);
  const at::Tensor H = hessian_of(correlated_inputs(1024, in, gen));
  GptqSettings s;
  s.group_size = g;
  s.desc_act = true;
  const GptqLinear q = gptq_quantize(W, H, s);
  const at::Tensor gi = q.g_idx.to(at::kLong);
  // Groups are formed in order of decreasing diag(H): along that order g_idx reads 0..0 1..1 2..2.
  const at::Tensor order = at::argsort(H.diagonal(), /*stable=*/true, 0, /*descending=*/true);
  EXPECT_TRUE(at::equal(gi.index_select(0, order), at::floor_divide(at::arange(in, at::kLong), g)));
  EXPECT_TRUE(at::equal(at::bincount(gi), at::full({in / g}, g, at::kLong)));
  EXPECT_FALSE(at::equal(gi, at::floor_divide(at::arange(in, at::kLong), g))) << "act-order g_idx should not be trivial here";
  // The most active input is in group 0.
  EXPECT_EQ(gi[H.diagonal().argmax()].item<int64_t>(), 0);
}

TEST(GptqQuantize, StaticGroupsGiveTrivialGidx) {
  at::Generator gen = at::detail::createCPUGenerator(fresh_seed("GptqQuantize.StaticGroupsGiveTrivialGidx"));
  const at::Tensor W = at::randn({16, 192}, gen);
  const at::Tensor H = hessian_of(correlated_inputs(1024, 192, gen));
  GptqSettings s;
  s.group_size = 64;
  s.desc_act = true;
  s.static_groups = true;
  const GptqLinear q = gptq_quantize(W, H, s);
  EXPECT_TRUE(at::equal(q.g_idx, (at::floor_divide(at::arange(192, at::kLong), 64)).to(at::kInt)));
  // The grids are RTN's, computed from the unmodified weight in the original order.
  const GptqLinear r = rtn_quantize(W, s);
  EXPECT_TRUE(at::equal(q.scales, r.scales));
  EXPECT_TRUE(at::equal(q.zeros, r.zeros));
  EXPECT_FALSE(at::equal(q.codes, r.codes));  // the error feedback still moves codes
}

TEST(GptqQuantize, EightBits) {
  at::Generator gen = at::detail::createCPUGenerator(fresh_seed("GptqQuantize.EightBits"));
  const at::Tensor W = at::randn({32, 128}, gen);
  const at::Tensor H = hessian_of(correlated_inputs(1024, 128, gen));
  GptqSettings s4, s8;
  s8.bits = 8;
  const GptqLinear q8 = gptq_quantize(W, H, s8);
  EXPECT_GT(q8.codes.max().item<int64_t>(), 15);
  EXPECT_TRUE((q8.zeros == 128).all().item<bool>());
  const double e8 = hessian_error(W, q8.dequantize(at::kFloat), H);
  const double e4 = hessian_error(W, gptq_quantize(W, H, s4).dequantize(at::kFloat), H);
  EXPECT_LT(e8, e4 / 100);  // 16x finer steps: ~256x smaller squared error
  const auto t = pack_gptq_v1("l", q8);
  const GptqLinear r = unpack_gptq_v1([&](const std::string& n) { return t.at(n); }, "mem", "l", 32, 128, 8, 128);
  EXPECT_TRUE(at::equal(r.codes, q8.codes));
}

TEST(GptqQuantize, DampingRetriesThenFails) {
  // All-ones H: the Cholesky's second pivot is 1 - 1·1 = 0 exactly, so with no damping it fails, and the
  // first retry (+0.01·mean diag) succeeds.
  const at::Tensor W = at::randn({8, 16});
  GptqSettings s;
  s.damp_percent = 0;
  GptqStats st;
  const GptqLinear q = gptq_quantize(W, at::ones({16, 16}), s, &st);
  EXPECT_EQ(st.retries, 1);
  EXPECT_DOUBLE_EQ(st.damp_used, 0.01);
  EXPECT_EQ(q.codes.size(1), 16);
  // Never positive definite (negative diagonal: damping relative to its mean makes it worse).
  try {
    gptq_quantize(W, -at::eye(16), s);
    ADD_FAILURE() << "no error";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("not positive definite even with damping 0.000000 raised to 1 (100 retries)"),
              std::string::npos)
        << e.what();
  }
  at::Tensor bad = at::eye(16);
  bad[2][3] = std::nan("");
  EXPECT_THROW(gptq_quantize(W, bad, s), InputError);
}

TEST(GptqQuantize, DeadColumnsZeroed) {
  at::Generator gen = at::detail::createCPUGenerator(fresh_seed("GptqQuantize.DeadColumnsZeroed"));
  const at::Tensor W = at::randn({8, 64}, gen);
  at::Tensor X = correlated_inputs(256, 64, gen);
  X.select(1, 5).zero_();  // input 5 never active
  GptqStats st;
  GptqSettings s;
  s.group_size = 32;
  const GptqLinear q = gptq_quantize(W, hessian_of(X), s, &st);
  EXPECT_EQ(st.dead_columns, 1);
  EXPECT_TRUE((q.dequantize(at::kFloat).select(1, 5) == 0).all().item<bool>());
}

TEST(GptqHessian, AccumulatorMatchesDirectFormula) {
  at::Generator gen = at::detail::createCPUGenerator(fresh_seed("GptqHessian.AccumulatorMatchesDirectFormula"));
  const at::Tensor X = at::randn({3, 100, 48}, gen);  // [batch, seq, in]
  HessianAccumulator acc(48, at::kCPU);
  acc.add(X[0]);
  acc.add(X.narrow(0, 1, 2));        // 3-D input
  acc.add(at::empty({0, 48}));       // nothing
  EXPECT_EQ(acc.tokens(), 300);
  const at::Tensor flat = X.reshape({-1, 48}).to(at::kDouble);
  const at::Tensor want = 2.0 / 300 * flat.t().mm(flat);
  EXPECT_TRUE(at::allclose(acc.hessian().to(at::kDouble), want, 1e-5, 1e-5));
  HessianAccumulator acc64(48, at::kCPU, at::kDouble);
  acc64.add(X);
  EXPECT_TRUE(at::allclose(acc64.hessian(), want, 1e-12, 1e-12));
  EXPECT_THROW(acc.add(at::randn({4, 47})), UsageError);
  // hessian_error(W, Q, H) = 2/n ||(W-Q) Xᵀ||².
  const at::Tensor W = at::randn({8, 48}, gen);
  const at::Tensor Q = rtn_quantize(W, GptqSettings{}).dequantize(at::kFloat);
  const double direct = 2.0 / 300 * ((W - Q).to(at::kDouble).mm(flat.t())).pow(2).sum().item<double>();
  EXPECT_NEAR(hessian_error(W, Q, acc64.hessian()), direct, 1e-9 * direct);
}

fs::path tiny_model() { return test_tools::shared_tiny_model(); }

TEST(GptqRealModel, BeatsRtnOnEveryLinear) {
  const fs::path dir = tiny_model();
  if (dir.empty()) GTEST_SKIP() << "shared tiny model absent";
  const uint32_t seed = fresh_seed("GptqRealModel.BeatsRtnOnEveryLinear");
  const LlamaModel model = LlamaModel::load(dir, LoadOptions{});
  // Calibration: 8 windows of 128 random token ids (the model's own hidden states feed each layer).
  at::Generator gen = at::detail::createCPUGenerator(seed);
  const at::Tensor ids = at::randint(0, model.config().vocab_size, {8, 128}, gen, at::kLong);
  const auto li = model.layer_inputs(8, 128);
  at::Tensor h = model.embed(ids);
  GptqSettings s;  // 4-bit, group 128 (one group for in = 64; two for down_proj's 192)
  const char* names[] = {"q", "k", "v", "o", "gate", "up", "down"};
  double sum_gptq = 0, sum_rtn = 0;
  for (int64_t i = 0; i < model.num_layers(); ++i) {
    const auto linears = model.layer(i).linears();
    std::map<const Linear*, HessianAccumulator> acc;
    for (const Linear* l : linears) acc.emplace(l, HessianAccumulator(l->weight.size(1), at::kCPU));
    RunContext ctx;
    ctx.on_linear_input = [&](const Linear& l, const at::Tensor& x) { acc.at(&l).add(x); };
    const at::Tensor next = model.run_layer(i, h, li, &ctx);
    for (std::size_t j = 0; j < linears.size(); ++j) {
      const at::Tensor& W = linears[j]->weight;
      const at::Tensor H = acc.at(linears[j]).hessian();
      const double e_gptq = hessian_error(W, gptq_quantize(W, H, s).dequantize(at::kFloat), H);
      const double e_rtn = hessian_error(W, rtn_quantize(W, s).dequantize(at::kFloat), H);
      std::printf("  layer %ld %-4s GPTQ %.4g RTN %.4g ratio %.3f\n", static_cast<long>(i), names[j], e_gptq, e_rtn,
                  e_gptq / e_rtn);
      EXPECT_LT(e_gptq, e_rtn) << "layer " << i << " " << names[j];
      sum_gptq += e_gptq;
      sum_rtn += e_rtn;
    }
    h = next;
  }
  std::printf("  total GPTQ %.4g RTN %.4g ratio %.3f\n", sum_gptq, sum_rtn, sum_gptq / sum_rtn);
}

int run(const std::string& cmd, std::string* out) {
  FILE* p = ::popen(cmd.c_str(), "r");
  char buf[4096];
  std::size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out->append(buf, n);
  return WEXITSTATUS(::pclose(p));
}

TEST(GptqModelDir, LoadsDequantizedAndInspects) {
  const fs::path src = tiny_model();
  if (src.empty()) GTEST_SKIP() << "shared tiny model absent";
  const LlamaModel dense = LlamaModel::load(src, LoadOptions{});
  GptqSettings s;
  s.group_size = 32;
  s.sym = false;
  // An RTN "GPTQ" directory of the shared model: packed linears, everything else as it was.
  ModelDirContents c;
  c.copy_files_from = src;
  std::ifstream cfg_in(src / "config.json");
  c.config = nlohmann::ordered_json::parse(cfg_in);
  c.config["quantization_config"] = gptq_quantization_config(s);
  std::map<std::string, GptqLinear> quantized;
  for (const auto& [name, t] : dense.state_tensors()) {
    const std::string prefix = name.substr(0, name.size() - 7);  // without ".weight"
    const bool linear = name.find(".layers.") != std::string::npos && name.find("_proj.weight") != std::string::npos;
    if (!linear) {
      c.tensors[name] = t;
      continue;
    }
    quantized[prefix] = rtn_quantize(t, s);
    for (auto& [n, p] : pack_gptq_v1(prefix, quantized[prefix])) c.tensors[n] = p;
  }
  ASSERT_EQ(quantized.size(), 35u);
  test_tools::ScratchDir tmp("gptq-dir");
  const fs::path out = tmp.path / "gptq";
  write_model_dir(out, c);

  const LlamaModel m = LlamaModel::load(out, LoadOptions{});
  ASSERT_TRUE(m.config().gptq.has_value());
  EXPECT_FALSE(m.config().gptq->sym);
  m.for_each_linear([&](const std::string& name, const Linear& l) {
    GptqLinear q = quantized.at(name);
    q.scales = q.scales.to(at::kHalf).to(at::kFloat);  // as stored
    ASSERT_TRUE(l.weight.defined()) << name;
    EXPECT_TRUE(at::equal(l.weight, q.dequantize(at::kFloat))) << name;
  });
  // Forward runs and stays near the dense model (4-bit, group 32 on a 64-wide model: loose, a sanity bound).
  const at::Tensor ids = at::arange(1, 33, at::kLong).unsqueeze(0);
  const at::Tensor lq = m.forward(ids), ld = dense.forward(ids);
  EXPECT_TRUE(at::isfinite(lq).all().item<bool>());
  EXPECT_LT(((lq - ld).norm() / ld.norm()).item<double>(), 0.5);
  // Re-quantized to NF4 while loading, as a QLoRA base.
  LoadOptions nf4;
  nf4.quantize = ops::QuantParams{};
  const LlamaModel mq = LlamaModel::load(out, nf4);
  mq.for_each_linear([&](const std::string& name, const Linear& l) { EXPECT_TRUE(l.qweight.has_value()) << name; });

  std::string text;
  ASSERT_EQ(run(std::string(QTRAIN_BINARY) + " inspect " + out.string() + " 2>&1", &text), 0) << text;
  EXPECT_NE(text.find("GPTQ v1 4-bit, group_size 32, asym"), std::string::npos) << text;
  std::string dense_text;
  ASSERT_EQ(run(std::string(QTRAIN_BINARY) + " inspect " + src.string() + " 2>&1", &dense_text), 0);
  auto params = [](const std::string& t) { return t.substr(t.find("parameters"), t.find('\n', t.find("parameters")) - t.find("parameters")); };
  EXPECT_EQ(params(text), params(dense_text));  // each GPTQ linear counted once, as out·in

  // A gptq_v2 directory is refused, naming the key.
  nlohmann::ordered_json v2 = c.config;
  v2["quantization_config"]["checkpoint_format"] = "gptq_v2";
  std::ofstream(out / "config.json") << v2.dump(2);
  text.clear();
  EXPECT_EQ(run(std::string(QTRAIN_BINARY) + " inspect " + out.string() + " 2>&1", &text), 3) << text;
  EXPECT_NE(text.find("quantization_config.checkpoint_format"), std::string::npos) << text;
}

}  // namespace
}  // namespace qtrain
