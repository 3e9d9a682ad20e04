// Generation (export/generate.h) and the `qtrain generate` CLI. Greedy decoding is compared with
// transformers in tests/oracle/test_generate.py; sampling cannot be (another RNG), so here its
// statistics: the warpers' order (temperature → top-k → top-p), what top-k and top-p keep, empirical
// frequencies against the probabilities, temperature → 0 and top-k 1 give greedy, seeds reproduce.
// And the CLI's bad arguments: exit 2 with a message naming the option.
#include <gtest/gtest.h>

#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <sys/wait.h>

#include "data/error.h"
#include "export/generate.h"
#include "tests/cli_run.h"
#include "tests/scratch_dir.h"

namespace qtrain {
namespace {
namespace fs = std::filesystem;

fs::path tiny_model() {
  const char* e = std::getenv("QTRAIN_SHARED_DATA");
  return fs::path(e && *e ? e : QTRAIN_SHARED_DATA) / "models" / "llama2c-xs-tok512-hf";
}

uint64_t fresh_seed() { return std::random_device{}(); }

// ---------------------------------------------------------------- sampling math

SamplingConfig sampled(double temperature, int64_t top_k, double top_p) {
  SamplingConfig s;
  s.greedy = false;
  s.temperature = temperature;
  s.top_k = top_k;
  s.top_p = top_p;
  return s;
}

TEST(Sampling, OffIsSoftmax) {
  const at::Tensor logits = at::randn({37});
  EXPECT_TRUE(at::allclose(sampling_probs(logits, sampled(1.0, 0, 1.0)), logits.softmax(-1)));
  // top_k ≥ vocab changes nothing either (transformers clamps k to the vocabulary).
  EXPECT_TRUE(at::allclose(sampling_probs(logits, sampled(1.0, 37, 1.0)), logits.softmax(-1)));
}

TEST(Sampling, TemperatureDividesTheLogits) {
  const at::Tensor logits = at::randn({50});
  EXPECT_TRUE(at::allclose(sampling_probs(logits, sampled(0.5, 0, 1.0)), (logits / 0.5).softmax(-1)));
}

TEST(Sampling, TopKKeepsTheKLargestRenormalised) {
  const at::Tensor logits = at::randn({64});
  const at::Tensor p = sampling_probs(logits, sampled(1.0, 5, 1.0));
  const auto [vals, idx] = at::topk(logits, 5);
  EXPECT_EQ((p > 0).sum().item<int64_t>(), 5);
  EXPECT_TRUE(at::allclose(p.index_select(0, idx), vals.softmax(-1)));
  // Ties with the k-th are kept, as transformers' `scores < kth` does.
  const at::Tensor tied = at::tensor({3.0f, 2.0f, 2.0f, 1.0f});
  EXPECT_EQ((sampling_probs(tied, sampled(1.0, 2, 1.0)) > 0).sum().item<int64_t>(), 3);
}

// Nucleus: the kept set is the smallest set of most likely tokens whose mass reaches top_p.
TEST(Sampling, TopPKeepsTheSmallestTopSetWithTheMass) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  for (const double top_p : {0.05, 0.3, 0.5, 0.9, 0.99}) {
    const at::Tensor logits = at::randn({200}, gen) * 2;
    const at::Tensor full = logits.softmax(-1).to(at::kDouble);
    const at::Tensor p = sampling_probs(logits, sampled(1.0, 0, top_p));
    const at::Tensor kept = p > 0;
    const double mass = full.masked_select(kept).sum().item<double>();
    const double smallest = full.masked_select(kept).min().item<double>();
    EXPECT_GE(mass, top_p - 1e-6) << "top_p " << top_p;
    EXPECT_LT(mass - smallest, top_p + 1e-6) << "top_p " << top_p << ": one token fewer would still reach the mass";
    // Kept tokens are exactly the most likely ones.
    EXPECT_GT(smallest, full.masked_select(kept.logical_not()).max().item<double>() - 1e-12);
  }
  // The most likely token always stays, however small top_p.
  const at::Tensor logits = at::randn({10}, gen);
  const at::Tensor p = sampling_probs(logits, sampled(1.0, 0, 1e-9));
  EXPECT_EQ(p.argmax().item<int64_t>(), logits.argmax().item<int64_t>());
  EXPECT_FLOAT_EQ(p.max().item<float>(), 1.0f);
}

// transformers' order: temperature, then top-k, then top-p on what top-k left. Probabilities
// 0.5 / 0.3 / 0.2: top-k 2 renormalises to 0.625 / 0.375, so top-p 0.6 keeps one token; top-p first
// would keep two (0.5 < 0.6). Temperature 3 flattens them so that top-p 0.6 keeps two again.
TEST(Sampling, OrderIsTemperatureTopKTopP) {
  const at::Tensor logits = at::log(at::tensor({0.5f, 0.3f, 0.2f}));
  EXPECT_EQ((sampling_probs(logits, sampled(1.0, 2, 0.6)) > 0).sum().item<int64_t>(), 1);
  EXPECT_EQ((sampling_probs(logits, sampled(1.0, 0, 0.6)) > 0).sum().item<int64_t>(), 2);  // control: no top-k
  EXPECT_EQ((sampling_probs(logits, sampled(3.0, 2, 0.6)) > 0).sum().item<int64_t>(), 2);
}

// Draws follow the probabilities: 20000 draws over 8 tokens, every frequency within 5 binomial sigmas.
TEST(Sampling, DrawFrequenciesMatchTheProbabilities) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  const at::Tensor logits = at::randn({8}, at::make_generator<at::CPUGeneratorImpl>(seed));
  const SamplingConfig s = sampled(0.8, 6, 0.95);
  const at::Tensor p = sampling_probs(logits, s).to(at::kDouble);
  std::mt19937_64 rng(seed);
  constexpr int kDraws = 20000;
  std::vector<int> counts(8, 0);
  for (int i = 0; i < kDraws; ++i) ++counts.at(next_token(logits, s, rng));
  for (int64_t t = 0; t < 8; ++t) {
    const double q = p[t].item<double>();
    if (q == 0.0) {
      EXPECT_EQ(counts[t], 0) << "token " << t << " was filtered out but drawn";
      continue;
    }
    const double sigma = std::sqrt(kDraws * q * (1 - q));
    EXPECT_NEAR(counts[t], kDraws * q, 5 * sigma + 1) << "token " << t;
  }
}

TEST(Sampling, LowTemperatureAndTopKOneAreGreedy) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  std::mt19937_64 rng(seed);
  SamplingConfig greedy;
  for (int i = 0; i < 200; ++i) {
    const at::Tensor logits = at::randn({100}, gen);
    const int64_t best = next_token(logits, greedy, rng);
    EXPECT_EQ(best, logits.argmax().item<int64_t>());
    // A temperature of gap/50 leaves the runner-up exp(-50) ≈ 2e-22 of the mass: never drawn. A fixed
    // 1e-4 was not greedy when the two largest of 100 normals lay 1.2e-4 apart (seed 973729235, draw 31).
    const at::Tensor top2 = std::get<0>(at::topk(logits, 2));
    const double gap = (top2[0] - top2[1]).item<double>();
    if (gap > 0) {
      EXPECT_EQ(next_token(logits, sampled(gap / 50, 0, 1.0), rng), best) << "gap " << gap;
    }
    EXPECT_EQ(next_token(logits, sampled(1.7, 1, 1.0), rng), best);
  }
}

TEST(Sampling, ValidateNamesTheSetting) {
  auto msg = [](const SamplingConfig& s) {
    GenerateConfig c;
    c.sampling = s;
    try {
      validate(c);
    } catch (const UsageError& e) {
      return std::string(e.what());
    }
    return std::string("(accepted)");
  };
  EXPECT_NE(msg(sampled(0.0, 0, 1.0)).find("temperature"), std::string::npos);
  EXPECT_NE(msg(sampled(NAN, 0, 1.0)).find("temperature"), std::string::npos);
  EXPECT_NE(msg(sampled(1.0, 0, 0.0)).find("top-p"), std::string::npos);
  EXPECT_NE(msg(sampled(1.0, 0, 1.5)).find("top-p"), std::string::npos);
  EXPECT_NE(msg(sampled(1.0, -1, 1.0)).find("top-k"), std::string::npos);
  EXPECT_EQ(msg(sampled(1.0, 0, 1.0)), "(accepted)");
  SamplingConfig g;  // greedy ignores the sampling fields
  g.temperature = 0;
  EXPECT_EQ(msg(g), "(accepted)");
}

// ---------------------------------------------------------------- generation_config.json

TEST(GenerationConfig, ReadsEosListAndSamplingDefaults) {
  test_tools::ScratchDir d("generate");
  ModelConfig c;
  c.eos_token_ids = {2};
  EXPECT_EQ(default_generate_config(d.path, c).eos_ids, std::vector<int64_t>{2});  // no file: config.json's
  EXPECT_TRUE(default_generate_config(d.path, c).sampling.greedy);
  std::ofstream(d.path / "generation_config.json")
      << R"({"eos_token_id": [128001, 128009], "do_sample": true, "temperature": 0.6, "top_p": 0.9})";
  const GenerateConfig g = default_generate_config(d.path, c);
  EXPECT_EQ(g.eos_ids, (std::vector<int64_t>{128001, 128009}));
  EXPECT_FALSE(g.sampling.greedy);
  EXPECT_DOUBLE_EQ(g.sampling.temperature, 0.6);
  EXPECT_DOUBLE_EQ(g.sampling.top_p, 0.9);
  EXPECT_EQ(g.sampling.top_k, 50);  // transformers' default
  std::ofstream(d.path / "generation_config.json", std::ios::trunc) << R"({"eos_token_id": "2"})";
  try {
    default_generate_config(d.path, c);
    FAIL() << "a string eos_token_id was accepted";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("generation_config.json"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("eos_token_id"), std::string::npos) << e.what();
  }
}

// ---------------------------------------------------------------- generate() on the tiny model

TEST(Generate, StopsAfterAnEosIdAndAtMaxNewTokens) {
  if (!fs::exists(tiny_model() / "model.safetensors")) GTEST_SKIP() << "shared test model not found at " << tiny_model();
  const LlamaModel m = LlamaModel::load(tiny_model(), {});
  GenerateConfig c;
  c.max_new_tokens = 20;
  const GenerateResult base = generate(m, {1}, c);
  ASSERT_EQ(base.tokens.size(), 20u);
  EXPECT_FALSE(base.stopped_at_eos);
  c.eos_ids = {base.tokens[7]};
  const auto first = std::find(base.tokens.begin(), base.tokens.end(), base.tokens[7]) - base.tokens.begin();
  const GenerateResult stopped = generate(m, {1}, c);
  EXPECT_TRUE(stopped.stopped_at_eos);
  EXPECT_EQ(stopped.tokens, std::vector<int64_t>(base.tokens.begin(), base.tokens.begin() + first + 1));
  c.max_new_tokens = 0;
  EXPECT_TRUE(generate(m, {1}, c).tokens.empty());
  EXPECT_THROW(generate(m, {}, c), UsageError);
  // Greedy decoding == argmax of the full forward pass, token by token (the cache changes nothing).
  std::vector<int64_t> seq = {1};
  for (int i = 0; i < 10; ++i) {
    const at::Tensor logits = m.forward(at::tensor(seq, at::kLong).view({1, -1}));
    seq.push_back(logits[0][-1].argmax().item<int64_t>());
  }
  EXPECT_EQ(std::vector<int64_t>(seq.begin() + 1, seq.end()), std::vector<int64_t>(base.tokens.begin(), base.tokens.begin() + 10));
}

// ---------------------------------------------------------------- the CLI

struct Cli {
  int code = -1;
  std::string out, err;
};

Cli run_generate(const std::string& args) {
  const test_tools::CliRun r = test_tools::run_qtrain("generate " + args, /*split_stderr=*/true);
  return {r.code, r.output, r.err};
}

std::string new_ids(const Cli& r) {
  const auto at = r.out.rfind("new_ids: ");
  return at == std::string::npos ? "(none)" : r.out.substr(at);
}

TEST(GenerateCli, BadArgumentsExitTwoNamingTheOption) {
  // Arguments are checked after the model loads (the template and vocabulary bound some of them).
  if (!fs::exists(tiny_model() / "model.safetensors")) GTEST_SKIP() << "shared test model not found at " << tiny_model();
  const std::string m = tiny_model().string();
  const std::vector<std::pair<std::string, std::string>> cases = {
      {m, "exactly one of --prompt"},
      {m + " --ids 1 --prompt hi", "more than one prompt"},
      {m + " --ids 1,x", "--ids"},
      {m + " --ids 1 --greedy --temperature 0.7", "--greedy"},
      {m + " --ids 1 --temperature 0", "temperature"},
      {m + " --ids 1 --top-p 1.5", "top-p"},
      {m + " --ids 1 --top-k -2", "top-k"},
      {m + " --ids 1 --max-new-tokens -1", "--max-new-tokens"},
      {m + " --ids 1 --quantize int8", "--quantize"},
      {m + " --ids 1 --template chatgpt", "--template"},
  };
  for (const auto& [args, expect] : cases) {
    const Cli r = run_generate(args);
    EXPECT_EQ(r.code, 2) << args << "\n" << r.err;
    EXPECT_NE(r.err.find(expect), std::string::npos) << args << ": expected '" << expect << "' in\n" << r.err;
  }
}

TEST(GenerateCli, BadInputExitsWithItsCode) {
  if (!fs::exists(tiny_model() / "model.safetensors")) GTEST_SKIP() << "shared test model not found at " << tiny_model();
  const std::string m = tiny_model().string();
  Cli r = run_generate(m + " --ids 1,512");  // vocab 512
  EXPECT_EQ(r.code, 2) << r.err;
  EXPECT_NE(r.err.find("outside the vocabulary"), std::string::npos) << r.err;
  r = run_generate(m + " --messages /nonexistent/conv.json");
  EXPECT_EQ(r.code, 3) << r.err;
  EXPECT_NE(r.err.find("/nonexistent/conv.json"), std::string::npos) << r.err;
}

TEST(GenerateCli, SeedsReproduceAndTopKOneIsGreedy) {
  if (!fs::exists(tiny_model() / "model.safetensors")) GTEST_SKIP() << "shared test model not found at " << tiny_model();
  const std::string m = tiny_model().string() + " --ids 1 --max-new-tokens 20 --print-ids";
  const Cli greedy = run_generate(m + " --greedy");
  ASSERT_EQ(greedy.code, 0) << greedy.err;
  const Cli a = run_generate(m + " --temperature 1.3 --top-k 0 --seed 7");
  const Cli b = run_generate(m + " --temperature 1.3 --top-k 0 --seed 7");
  const Cli c = run_generate(m + " --temperature 1.3 --top-k 0 --seed 8");
  ASSERT_EQ(a.code, 0) << a.err;
  EXPECT_EQ(a.out, b.out);
  EXPECT_NE(new_ids(a), new_ids(c)) << "seeds 7 and 8 drew the same 20 tokens at temperature 1.3";
  EXPECT_NE(new_ids(a), new_ids(greedy));
  EXPECT_EQ(new_ids(run_generate(m + " --top-k 1 --temperature 2 --seed 3")), new_ids(greedy));
  // Without --seed one is drawn and printed, so the run can be repeated.
  const Cli drawn = run_generate(m + " --temperature 1.3");
  const auto at = drawn.err.find("seed ");
  ASSERT_NE(at, std::string::npos) << drawn.err;
  const std::string seed = drawn.err.substr(at + 5, drawn.err.find_first_not_of("0123456789", at + 5) - at - 5);
  EXPECT_EQ(run_generate(m + " --temperature 1.3 --seed " + seed).out, drawn.out);
}

}  // namespace
}  // namespace qtrain
