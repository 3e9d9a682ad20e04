// Training throughput and peak memory on a real model shape with random weights (no checkpoint needed):
//   train_bench [--preset llama2-7b|llama3-8b|tiny] [--seq 2048] [--batch 1] [--steps 10] [--rank 16]
//               [--no-recompute] [--device cuda|cpu]
// The step is the loop's own train_step (trainer/step.h: QLoRA linears on an NF4+DQ base, LoRA on all
// 7 linears, token-weighted loss with the chunked LM-head backward, clipping, AdamW 32-bit).
// Prints tok/s, MFU by performance.md §2 (causal attention, H100 bf16 peak 989.4 TF/s) and ratios
// to the goal and to the best published peer at this shape.
// scripts/gpu-check.sh runs every *_bench target on the device.
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Context.h>

#include <chrono>
#include <cstdio>
#include <iostream>
#include <string>

#if defined(QTRAIN_WITH_CUDA)
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#endif

#include "trainer/metrics_log.h"
#include "trainer/model/model.h"
#include "trainer/optimizer.h"
#include "trainer/step.h"

using namespace qtrain;

namespace {

ModelConfig preset(const std::string& name) {
  ModelConfig c;
  c.family = ModelFamily::kLlama;
  c.rms_norm_eps = 1e-5;
  if (name == "llama2-7b") {
    c.vocab_size = 32000, c.hidden_size = 4096, c.intermediate_size = 11008, c.num_hidden_layers = 32;
    c.num_attention_heads = 32, c.num_key_value_heads = 32;
  } else if (name == "llama3-8b") {
    c.vocab_size = 128256, c.hidden_size = 4096, c.intermediate_size = 14336, c.num_hidden_layers = 32;
    c.num_attention_heads = 32, c.num_key_value_heads = 8, c.rope.theta = 500000;
  } else if (name == "tiny") {
    c.vocab_size = 512, c.hidden_size = 256, c.intermediate_size = 688, c.num_hidden_layers = 4;
    c.num_attention_heads = 8, c.num_key_value_heads = 4;
  } else {
    throw std::invalid_argument("unknown --preset '" + name + "' (llama2-7b, llama3-8b, tiny)");
  }
  c.head_dim = c.hidden_size / c.num_attention_heads;
  return c;
}

void sync(const at::Device& d) {
#if defined(QTRAIN_WITH_CUDA)
  if (d.is_cuda()) c10::cuda::device_synchronize();
#endif
}

double peak_mib(const at::Device& d) {
#if defined(QTRAIN_WITH_CUDA)
  if (d.is_cuda()) {
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(d.index() < 0 ? 0 : d.index());
    return static_cast<double>(stats.reserved_bytes[0].peak) / (1 << 20);
  }
#endif
  return peak_host_memory_mib();
}

}  // namespace

int main(int argc, char** argv) {
  std::string name = "", device = at::hasCUDA() ? "cuda" : "cpu";
  int64_t seq = 0, batch = 1, steps = 10, rank = 16;
  bool recompute = true;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string { return i + 1 < argc ? argv[++i] : ""; };
    if (a == "--preset") name = next();
    else if (a == "--seq") seq = std::stoll(next());
    else if (a == "--batch") batch = std::stoll(next());
    else if (a == "--steps") steps = std::stoll(next());
    else if (a == "--rank") rank = std::stoll(next());
    else if (a == "--no-recompute") recompute = false;
    else if (a == "--device") device = next();
    else {
      std::cerr << "train_bench: unknown argument '" << a << "'\n";
      return 2;
    }
  }
  const at::Device dev(device);
  if (name.empty()) name = dev.is_cuda() ? "llama2-7b" : "tiny";
  if (seq == 0) seq = dev.is_cuda() ? 2048 : 256;
  try {
    const ModelConfig c = preset(name);
    LoadOptions lo;
    lo.device = dev;
    lo.dtype = dev.is_cuda() ? at::kBFloat16 : at::kFloat;
    lo.quantize = ops::QuantParams{};
    auto t0 = std::chrono::steady_clock::now();
    // Weights are drawn where they live: a device generator on CUDA.
    at::Generator wgen = at::make_generator<at::CPUGeneratorImpl>(0);
    if (dev.is_cuda()) {
      wgen = at::globalContext().defaultGenerator(dev).clone();
      wgen.set_current_seed(0);
    }
    LlamaModel m = LlamaModel::random(c, lo, wgen);
    LoraSpec spec;
    spec.config.rank = rank;
    spec.config.alpha = 2.0 * rank;
    spec.dtype = lo.dtype;  // the trainer's default (lora.dtype: auto = the compute dtype)
    m.add_lora(spec, at::make_generator<at::CPUGeneratorImpl>(1));
    auto opt = make_optimizer(OptimizerSection{}, /*weight_decay=*/0.0, m.lora_parameters());
    sync(dev);
    const double build_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

    const auto cpu = at::TensorOptions().dtype(at::kLong);
    at::Tensor ids = at::randint(0, c.vocab_size, {batch, seq}, cpu);
    at::Tensor labels = ids.clone();
    labels.select(1, 0).fill_(-100);
    at::Tensor pos = at::arange(seq, cpu).repeat({batch, 1});
    at::Tensor seg = at::zeros({batch, seq}, at::TensorOptions().dtype(at::kInt));
    Batch b;
    b.input_ids = ids;
    b.labels = labels;
    b.positions = pos;
    b.segment_ids = seg;
    RunContext ctx;
    ctx.training = true;
    ctx.recompute = recompute;
    const int64_t tokens = batch * (seq - 1);
    b.num_target_tokens = tokens;
    double loss = 0, step_s = 0;
    for (int64_t s = 0; s < steps + 2; ++s) {  // two warm-up steps, not timed
      sync(dev);
      const auto ts = std::chrono::steady_clock::now();
      StepSettings ss;
      ss.update = s + 1;
      ss.lr = 1e-4;
      ss.max_grad_norm = 0.3;  // the QLoRA recipe's value
      loss = train_step(m, *opt, {b}, ss, ctx).loss;
      sync(dev);
      if (s >= 2) step_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - ts).count();
    }
    step_s /= static_cast<double>(steps);
    const double tok_s = tokens / step_s;
    // performance.md §2: model FLOPs/token = 4·N_mm + 3·A + 6·r·S_lora, A = 2·n_l·d·L (causal count).
    const double d = c.hidden_size, f = c.intermediate_size, kv = c.kv_dim(), nl = c.num_hidden_layers;
    const double n_mm = nl * (d * d * 2 + 2 * d * kv + 3 * d * f) + d * c.vocab_size;
    const double s_lora = nl * ((d + d) * 2 + 2 * (d + kv) + 3 * (d + f));
    const double flops = 4 * n_mm + 3 * (2 * nl * d * seq) + 6 * rank * s_lora;
    const double mfu = tok_s * flops / 989.4e12;
    std::printf("preset %s on %s (%s, adapters too), batch %lld × seq %lld, r %lld, recompute %s, %lld steps (+2 warm-up); built in %.1f s\n",
                name.c_str(), dev.str().c_str(), c10::toString(lo.dtype), static_cast<long long>(batch),
                static_cast<long long>(seq), static_cast<long long>(rank), recompute ? "on" : "off",
                static_cast<long long>(steps), build_s);
    std::printf("step %.1f ms, %.0f trained tok/s, loss %.3f, peak %s memory %.0f MiB, MFU %.1f%% (H100 bf16 peak)\n",
                step_s * 1e3, tok_s, loss, dev.is_cuda() ? "CUDA reserved" : "host RSS", peak_mib(dev), 100 * mfu);
    if (name == "llama2-7b" && seq == 2048 && dev.is_cuda())
      std::printf("ratio to goal G1 (10,000 tok/s): %.2f×; to Unsloth's published A100 bs1×2048 (3,178 tok/s, not this run): %.2f×\n",
                  tok_s / 10000, tok_s / 3178);
  } catch (const std::exception& e) {
    std::cerr << "train_bench: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
