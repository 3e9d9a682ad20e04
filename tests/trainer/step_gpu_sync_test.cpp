// train_step on CUDA synchronises the host with the device exactly once per step: the read of [loss sum, Σ g²]
// that logging, clipping and the finite check need (trainer/step.cpp, "The one synchronisation").
//
// Counted with c10's CUDA sync debug mode (c10/cuda/CUDAFunctions.h) in its warning setting: every torch-level
// synchronising call (.item(), .cpu() and other device-to-host copies into pageable memory, nonzero and
// friends, stream or device synchronize) raises a warning, and a warning handler on this thread counts them.
// Warnings raised on the autograd engine's device threads are replayed on the calling thread when backward
// returns, so the backward pass is counted too. Raw CUDA calls outside torch (cudaEventSynchronize, cudaMemcpy)
// are not seen by the mode; the paged optimizer's copies are cudaMemcpyAsync on a side stream with events.
//
// Two set-ups on a tiny random NF4 + LoRA model: fp32 with 32-bit AdamW and padded rows over two
// micro-batches; bf16 with recompute, offloaded checkpoints, LoRA dropout on a device generator, packed rows
// and a paged 8-bit AdamW that evicts pages. Each counts two steps after a warm-up step, and checks the
// reported gradient norm (CUDA: torch's multi-tensor norm) against an fp64 norm of the gradients.
#include <gtest/gtest.h>

#include <ATen/CPUGeneratorImpl.h>
#include <torch/cuda.h>

#if defined(QTRAIN_WITH_CUDA)
#include <c10/cuda/CUDAFunctions.h>
#endif

#include <random>
#include <string>
#include <vector>

#include "tests/cuda_sync_counter.h"
#include "trainer/model/lora.h"
#include "trainer/model/model.h"
#include "trainer/optimizer.h"
#include "trainer/step.h"

namespace qtrain {
namespace {

#if defined(QTRAIN_WITH_CUDA)

at::Generator cuda_generator(uint64_t seed) {
  at::Generator g = at::globalContext().defaultGenerator(at::Device(at::kCUDA, 0)).clone();
  g.set_current_seed(seed);
  return g;
}

struct StepSetup {
  at::ScalarType dtype = at::kFloat;
  bool recompute = false;
  bool offload = false;
  double dropout = 0.0;
  bool packed_rows = false;  // two documents per row (segment ids 0 and 1): the explicit-mask path
  OptimizerSection optimizer;
};

// A 2-layer Llama on the GPU: NF4 linears quantized there, LoRA r 4 on every linear, B made non-zero so every
// adapter tensor gets a gradient.
LlamaModel gpu_model(const StepSetup& s, uint64_t seed) {
  ModelConfig c;
  c.family = ModelFamily::kLlama;
  c.vocab_size = 61, c.hidden_size = 32, c.intermediate_size = 44, c.num_hidden_layers = 2;
  c.num_attention_heads = 4, c.num_key_value_heads = 2, c.head_dim = 8, c.rms_norm_eps = 1e-5;
  LoadOptions lo;
  lo.device = at::Device(at::kCUDA, 0);
  lo.dtype = s.dtype;
  lo.quantize = ops::QuantParams{};
  LlamaModel m = LlamaModel::random(c, lo, cuda_generator(seed));
  LoraSpec spec;
  spec.config.rank = 4;
  spec.config.alpha = 8;
  spec.config.dropout = s.dropout;
  m.add_lora(spec, at::make_generator<at::CPUGeneratorImpl>(seed + 1));
  at::NoGradGuard ng;
  for (auto& [name, p] : m.lora_parameters()) p.add_(at::randn_like(p) * 0.05);
  return m;
}

// Rows as the loader builds them: on the host, right-padded (segment -1) or packed (segments 0 and 1).
Batch host_batch(int64_t b, int64_t t, bool packed, at::Generator& g) {
  Batch r;
  r.input_ids = at::randint(0, 61, {b, t}, g, at::kLong);
  r.labels = r.input_ids.clone();
  r.positions = at::arange(t, at::kLong).repeat({b, 1});
  r.segment_ids = at::zeros({b, t}, at::kInt);
  for (int64_t i = 0; i < b; ++i) {
    r.labels[i].narrow(0, 0, 1).fill_(-100);
    if (packed) {
      const int64_t half = t / 2;
      r.segment_ids[i].narrow(0, half, t - half).fill_(1);
      r.positions[i].narrow(0, half, t - half).copy_(at::arange(t - half, at::kLong));
      r.labels[i].narrow(0, half, 1).fill_(-100);
    } else if (const int64_t len = std::max<int64_t>(3, t - 3 * i); len < t) {
      r.labels[i].narrow(0, len, t - len).fill_(-100);
      r.segment_ids[i].narrow(0, len, t - len).fill_(-1);
      r.positions[i].narrow(0, len, t - len).fill_(0);
    }
  }
  r.num_target_tokens = (r.labels != -100).sum().item<int64_t>();  // host tensors: no device involved
  return r;
}

void expect_one_sync_per_step(const StepSetup& s) {
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  at::manual_seed(seed);
  LlamaModel model = gpu_model(s, seed);
  std::unique_ptr<Optimizer> opt = make_optimizer(s.optimizer, /*weight_decay=*/0.01, model.lora_parameters());
  at::Generator g = at::make_generator<at::CPUGeneratorImpl>(seed + 3);
  const std::vector<Batch> micro = {host_batch(3, 12, s.packed_rows, g), host_batch(2, 9, s.packed_rows, g)};
  RunContext ctx;
  ctx.training = true;
  ctx.recompute = s.recompute;
  ctx.offload_checkpoints = s.offload;
  if (s.dropout > 0) ctx.dropout_gen = cuda_generator(seed + 4);
  StepSettings st;
  st.lr = 1e-3;
  st.max_grad_norm = 1.0;

  st.update = 1;
  ASSERT_TRUE(train_step(model, *opt, micro, st, ctx).finite);  // warm-up: lazy initialisations happen here
  for (int64_t update = 2; update <= 3; ++update) {
    st.update = update;
    StepResult r;
    std::size_t syncs = 0;
    std::string report;
    {
      SyncCounter counter;
      r = train_step(model, *opt, micro, st, ctx);
      syncs = counter.count();
      report = counter.report();
    }
    EXPECT_EQ(syncs, 1u) << "update " << update << ": host synchronisations inside train_step\n" << report;
    ASSERT_TRUE(r.finite);
    // The multi-tensor norm against an fp64 norm of the same gradients (fp32 accumulation: 1e-5 relative).
    std::vector<at::Tensor> flat;
    for (const auto& [name, p] : opt->params()) flat.push_back(p.grad().to(at::kDouble).reshape({-1}).cpu());
    const double norm = at::cat(flat).norm().item<double>();
    EXPECT_GT(norm, 0.0);
    EXPECT_NEAR(r.grad_norm, norm, 1e-5 * norm) << "update " << update;
  }
}

TEST(TrainStepGpu, OneHostSyncPerStepFp32PaddedRows) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  expect_one_sync_per_step(StepSetup{});
}

TEST(TrainStepGpu, OneHostSyncPerStepBf16RecomputeOffloadDropoutPagedAdamW8bit) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  StepSetup s;
  s.dtype = at::kBFloat16;
  s.recompute = true;
  s.offload = true;
  s.dropout = 0.1;
  s.packed_rows = true;
  s.optimizer.bits = 8;
  s.optimizer.min_8bit_size = 16;  // the tiny adapters take the 8-bit path
  s.optimizer.paged = true;
  s.optimizer.page_kb = 4;
  s.optimizer.device_budget_mb = 8.0 / 1024;  // two 4 KiB slots: pages move in and out every step
  expect_one_sync_per_step(s);
}

#else

TEST(TrainStepGpu, OneHostSyncPerStep) { GTEST_SKIP() << "built without CUDA"; }

#endif

}  // namespace
}  // namespace qtrain
