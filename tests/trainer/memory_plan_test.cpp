// The memory planner (trainer/memory_plan.h): its arithmetic (8-bit state a quarter of 32-bit, paging keeps
// only the budget, offloading removes the checkpoints, longer contexts need more), sizes parse, `qtrain plan`
// answers for Llama-2-7B, Llama-3-8B and Llama-2-70B shapes (configs written here, no weights), and the
// prediction against the peak a counting CPU allocator measures for real training steps of two model shapes at
// several batch × length settings (printed: docs/PERFORMANCE.md records them).
#include <gtest/gtest.h>

#include <ATen/CPUGeneratorImpl.h>

#include <fstream>
#include <random>

#include "data/error.h"
#include "tests/cli_run.h"
#include "tests/ops/counting_allocator.h"
#include "tests/scratch_dir.h"
#include "trainer/memory_plan.h"
#include "trainer/model/lora.h"
#include "trainer/model/model.h"
#include "trainer/optimizer.h"
#include "trainer/step.h"

namespace qtrain {
namespace {

ModelConfig llama(int64_t h, int64_t i, int64_t layers, int64_t heads, int64_t kv, int64_t vocab) {
  ModelConfig c;
  c.hidden_size = h, c.intermediate_size = i, c.num_hidden_layers = layers;
  c.num_attention_heads = heads, c.num_key_value_heads = kv, c.head_dim = h / heads, c.vocab_size = vocab;
  return c;
}

PlanSettings settings_7b() {
  PlanSettings s;
  s.model = llama(4096, 11008, 32, 32, 32, 32000);
  s.targets = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
  s.lora_r = 64;
  s.seq_len = 2048;
  return s;
}

TEST(MemoryPlan, ComponentsRespondToTheSettings) {
  const PlanSettings s = settings_7b();
  const MemoryPlan p = plan_memory(s);
  auto part = [](const MemoryPlan& m, const std::string& name) {
    for (const auto& x : m.parts)
      if (x.name == name) return x.bytes;
    ADD_FAILURE() << "no part " << name;
    return 0.0;
  };
  // NF4 + double quant of Llama-2-7B's decoder linears: 6.48e9 weights at ~0.5 + 1/64 + 4/16384 bytes each.
  EXPECT_NEAR(part(p, "base weights") / 1e9, 6.476e9 * (0.5 + 1.0 / 64) / 1e9, 0.01);
  // LoRA r 64 on every linear: 160 M parameters in fp32.
  EXPECT_NEAR(part(p, "LoRA parameters") / 4, 159.9e6, 0.1e6);
  EXPECT_NEAR(part(p, "optimizer state"), 8 * 159.9e6, 1e6);
  PlanSettings s8 = s;
  s8.optimizer.bits = 8;
  EXPECT_NEAR(part(plan_memory(s8), "optimizer state") / part(p, "optimizer state"), (2 + 8.0 / 256) / 8, 1e-3);
  PlanSettings paged = s8;
  paged.optimizer.paged = true;
  paged.optimizer.device_budget_mb = 64;
  const MemoryPlan pp = plan_memory(paged);
  EXPECT_EQ(part(pp, "optimizer state"), 64.0 * 1024 * 1024);
  EXPECT_NEAR(pp.host, part(plan_memory(s8), "optimizer state"), 1);
  PlanSettings off = s;
  off.offload_checkpoints = true;
  EXPECT_LT(part(plan_memory(off), "recompute checkpoints"), part(p, "recompute checkpoints") / 10);
  PlanSettings longer = s;
  longer.seq_len = 8192;
  EXPECT_GT(plan_memory(longer).peak, p.peak);
  // What fits grows with the memory, and is what it says it is.
  const double gib = 1024.0 * 1024 * 1024;
  const int64_t c24 = longest_fitting_context(s, 24 * gib), c80 = longest_fitting_context(s, 80 * gib);
  EXPECT_GT(c24, 2048);
  EXPECT_GT(c80, 3 * c24);
  PlanSettings at = s;
  at.seq_len = c24;
  EXPECT_LE(plan_memory(at, 24 * gib).peak, 24 * gib);
  at.seq_len = c24 + 256;
  EXPECT_GT(plan_memory(at, 24 * gib).peak, 24 * gib);
  EXPECT_EQ(longest_fitting_context(s, 1 * gib), 0) << "a 7B base does not fit in 1 GiB at any length";
}

TEST(MemoryPlan, ParsesSizes) {
  EXPECT_EQ(parse_bytes("24GiB", "x"), 24.0 * 1024 * 1024 * 1024);
  EXPECT_EQ(parse_bytes("80 GB", "x"), 80e9);
  EXPECT_EQ(parse_bytes("512MiB", "x"), 512.0 * 1024 * 1024);
  EXPECT_EQ(parse_bytes("1000", "x"), 1000.0);
  for (const char* bad : {"", "GiB", "-3GiB", "12parsecs", "nan"}) {
    try {
      parse_bytes(bad, "--gpu-mem");
      ADD_FAILURE() << "accepted '" << bad << "'";
    } catch (const UsageError& e) {
      EXPECT_NE(std::string(e.what()).find("--gpu-mem"), std::string::npos) << e.what();
    }
  }
}

// `qtrain plan` on the shapes the issue names, with recipes and config.json files written here.
TEST(MemoryPlan, PlanVerbAnswersForLlamaShapes) {
  test_tools::ScratchDir tmp("plan");
  struct Shape {
    const char* name;
    int64_t h, i, layers, heads, kv, vocab;
  };
  for (const Shape& sh : {Shape{"llama-2-7b", 4096, 11008, 32, 32, 32, 32000}, Shape{"llama-3-8b", 4096, 14336, 32, 32, 8, 128256},
                          Shape{"llama-2-70b", 8192, 28672, 80, 64, 8, 32000}}) {
    const auto dir = tmp.path / sh.name;
    std::filesystem::create_directories(dir);
    std::ofstream(dir / "config.json") << "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", \"hidden_size\": "
                                       << sh.h << ", \"intermediate_size\": " << sh.i << ", \"num_hidden_layers\": " << sh.layers
                                       << ", \"num_attention_heads\": " << sh.heads << ", \"num_key_value_heads\": " << sh.kv
                                       << ", \"vocab_size\": " << sh.vocab << ", \"rms_norm_eps\": 1e-5}";
    std::ofstream(dir / "recipe.yaml") << "model:\n  path: " << dir.string() << "\nlora:\n  r: 64\n  dropout: 0.05\n"
                                       << "data:\n  files: [x.jsonl]\n  max_seq_len: 2048\n"
                                       << "optimizer:\n  name: paged_adamw_32bit\n";
    for (const char* mem : {"24GiB", "80GiB"}) {
      const auto r = test_tools::run_qtrain("plan " + (dir / "recipe.yaml").string() + " --gpu-mem " + mem);
      ASSERT_EQ(r.code, 0) << sh.name << " " << mem << "\n" << r.output;
      EXPECT_NE(r.output.find("peak (device)"), std::string::npos) << r.output;
      EXPECT_NE(r.output.find("longest context"), std::string::npos) << r.output;
      std::cout << "--- " << sh.name << " in " << mem << "\n" << r.output;
    }
  }
  const auto bad = test_tools::run_qtrain("plan " + (tmp.path / "llama-2-7b" / "recipe.yaml").string() + " --gpu-mem lots");
  EXPECT_EQ(bad.code, 2) << bad.output;
}

// ---- measured on the CPU ----

struct Measured {
  double peak;
  double predicted;
};

// Builds the model, adapters and optimizer under the counting allocator and runs two optimizer steps of one
// micro-batch of full-length rows; returns the peak of live bytes (everything qtrain allocated) and the plan's
// `allocated` for the same settings on the CPU.
Measured measure(const ModelConfig& c, int64_t batch, int64_t seq, int64_t bits) {
  test::CountingAllocator& a = test::CountingAllocator::instance();
  double peak = 0;
  {
    const test::AllocatorScope counting;  // checks that the install took effect
    const int64_t base_live = a.live();
    a.reset_peak();
    LoadOptions lo;
    lo.quantize = ops::QuantParams{};
    LlamaModel m = LlamaModel::random(c, lo, at::make_generator<at::CPUGeneratorImpl>(1));
    LoraSpec spec;
    spec.config.rank = 16;
    spec.config.alpha = 32;
    spec.config.dropout = 0.05;
    m.add_lora(spec, at::make_generator<at::CPUGeneratorImpl>(2));
    OptimizerSection o;
    o.bits = bits;
    auto opt = make_optimizer(o, 0.0, m.lora_parameters());
    at::Generator g = at::make_generator<at::CPUGeneratorImpl>(3);
    Batch b;
    b.input_ids = at::randint(0, c.vocab_size, {batch, seq}, g, at::kLong);
    b.labels = b.input_ids.clone();
    b.positions = at::arange(seq, at::kLong).repeat({batch, 1});
    b.segment_ids = at::zeros({batch, seq}, at::kInt);
    b.num_target_tokens = batch * (seq - 1);
    RunContext ctx;
    ctx.training = true;
    ctx.recompute = true;
    ctx.dropout_gen = at::make_generator<at::CPUGeneratorImpl>(4);
    for (int64_t step = 1; step <= 2; ++step) train_step(m, *opt, {b}, StepSettings{step, 1e-3, 0.3}, ctx);
    peak = static_cast<double>(a.peak() - base_live);
  }
  PlanSettings s;
  s.model = c;
  s.targets = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
  s.lora_r = 16;
  s.lora_dropout = 0.05;
  s.compute_bytes = 4;
  s.cuda = false;
  s.micro_batch = batch;
  s.seq_len = seq;
  s.optimizer.bits = bits;
  return {peak, plan_memory(s).allocated};
}

struct Case {
  const char* model;
  ModelConfig c;
  int64_t batch, seq, bits;
};

// The shared tiny Llama's shape (dim 64, 5 layers, 8 heads, 4 kv heads, ffn 192, vocab 512) and a wider one like
// the quick start's, with a larger vocabulary so the loss chunk matters.
const ModelConfig kTiny = llama(64, 192, 5, 8, 4, 512);
const ModelConfig kWide = llama(256, 688, 4, 8, 4, 4096);

// The plan against the measured CPU peak: fp32 compute, so activations weigh twice what they do in bf16 on a GPU.
// Bound: within 25% (measured +18% on the tiny shape, where the per-layer terms the plan rounds up dominate, and
// within 3% on the wider one; docs/PERFORMANCE.md).
void expect_tracks(const std::vector<Case>& cases) {
  for (const Case& k : cases) {
    const Measured m = measure(k.c, k.batch, k.seq, k.bits);
    const double rel = (m.predicted - m.peak) / m.peak;
    std::printf("plan vs measured CPU peak: %-4s %d x %-5d %2d-bit: measured %8.2f MiB, predicted %8.2f MiB (%+.1f%%)\n", k.model,
                static_cast<int>(k.batch), static_cast<int>(k.seq), static_cast<int>(k.bits), m.peak / 1048576, m.predicted / 1048576,
                100 * rel);
    EXPECT_LT(std::fabs(rel), 0.25) << k.model << " " << k.batch << "x" << k.seq;
  }
}

TEST(MemoryPlan, PredictionTracksMeasuredCpuPeak) {
  expect_tracks({{"tiny", kTiny, 2, 256, 32}, {"wide", kWide, 1, 256, 8}});
}

TEST(MemoryPlan, PredictionTracksMeasuredCpuPeakLongSlow) {
  expect_tracks({{"tiny", kTiny, 1, 512, 32}, {"tiny", kTiny, 2, 2048, 32}, {"wide", kWide, 1, 512, 32},
                 {"wide", kWide, 4, 512, 8}, {"wide", kWide, 1, 2048, 32}});
}


// training.offload_checkpoints: the recompute checkpoints go to host memory (on the CPU a separate copy, the same
// code path as pinned memory on CUDA) and come back for the backward: the loss and every gradient are bit-identical.
TEST(MemoryPlan, OffloadedCheckpointsGiveIdenticalGradients) {
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::vector<std::vector<at::Tensor>> grads(2);
  std::vector<double> losses(2);
  for (int offload = 0; offload < 2; ++offload) {
    LoadOptions lo;
    lo.quantize = ops::QuantParams{};
    LlamaModel m = LlamaModel::random(kTiny, lo, at::make_generator<at::CPUGeneratorImpl>(seed));
    LoraSpec spec;
    spec.config.rank = 4;
    spec.config.alpha = 8;
    spec.config.dropout = 0.1;  // the replayed dropout masks must survive the trip too
    m.add_lora(spec, at::make_generator<at::CPUGeneratorImpl>(seed + 1));
    auto opt = make_optimizer(OptimizerSection{}, 0.0, m.lora_parameters());
    at::Generator g = at::make_generator<at::CPUGeneratorImpl>(seed + 2);
    Batch b;
    b.input_ids = at::randint(0, kTiny.vocab_size, {2, 64}, g, at::kLong);
    b.labels = b.input_ids.clone();
    b.positions = at::arange(64, at::kLong).repeat({2, 1});
    b.segment_ids = at::zeros({2, 64}, at::kInt);
    b.num_target_tokens = 2 * 63;
    RunContext ctx;
    ctx.training = true;
    ctx.recompute = true;
    ctx.offload_checkpoints = offload == 1;
    ctx.dropout_gen = at::make_generator<at::CPUGeneratorImpl>(seed + 3);
    losses[offload] = train_step(m, *opt, {b}, StepSettings{1, 1e-3, 0.0}, ctx).loss;
    for (const auto& [n, p] : opt->params()) grads[offload].push_back(p.grad().clone());
  }
  EXPECT_EQ(losses[0], losses[1]);
  ASSERT_EQ(grads[0].size(), grads[1].size());
  for (std::size_t i = 0; i < grads[0].size(); ++i) EXPECT_TRUE(at::equal(grads[0][i], grads[1][i])) << "gradient " << i;
}

}  // namespace
}  // namespace qtrain
