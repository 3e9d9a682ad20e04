// Packed-row attention, dense [B, 1, T, T] mask (the old path) vs per document (trainer/model/attention.h):
//   attention_bench [--batch 4] [--seq 1024] [--docs 8] [--reps 5] [--device cpu|cuda]
// 1. attention alone, q/k/v [batch, 8 heads, seq, 64] (GQA 8/4), forward + backward;
// 2. forward + backward of a quickstart-sized Llama (hidden 128, 4 layers, 4 heads, LoRA r16 on every
//    linear, fp32 on the CPU / bf16 on CUDA) on packed rows of ~docs documents each (the last row ends in
//    padding). The dense path is the model's own fallback, forced by document ids that recur in a row
//    (0 1 0 1 ...): the same mask-building and SDPA work as before, the attention pattern aside.
// Prints the median time per repetition and, on the CPU, the peak bytes allocated.
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <random>
#include <string>

#if defined(QTRAIN_WITH_CUDA)
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#endif

#include "tests/ops/counting_allocator.h"
#include "trainer/model/attention.h"
#include "trainer/model/attention_mask.h"
#include "trainer/model/model.h"

using namespace qtrain;

namespace {

void sync(const at::Device& d) {
#if defined(QTRAIN_WITH_CUDA)
  if (d.is_cuda()) c10::cuda::device_synchronize();
#endif
  (void)d;
}

void reset_peak(const at::Device& d) {
#if defined(QTRAIN_WITH_CUDA)
  if (d.is_cuda()) return c10::cuda::CUDACachingAllocator::resetPeakStats(d.index() < 0 ? 0 : d.index());
#endif
  qtrain::test::CountingAllocator::instance().reset_peak();
}

double peak_mib(const at::Device& d) {
#if defined(QTRAIN_WITH_CUDA)
  if (d.is_cuda()) {
    const auto s = c10::cuda::CUDACachingAllocator::getDeviceStats(d.index() < 0 ? 0 : d.index());
    return static_cast<double>(s.allocated_bytes[0].peak) / (1 << 20);
  }
#endif
  return static_cast<double>(qtrain::test::CountingAllocator::instance().peak()) / (1 << 20);
}

// Median seconds of fn over reps (after one warm-up), and the peak MiB of the last repetition.
template <typename Fn>
std::pair<double, double> measure(const at::Device& d, int reps, Fn fn) {
  fn();
  std::vector<double> t;
  double peak = 0;
  for (int i = 0; i < reps; ++i) {
    sync(d);
    reset_peak(d);
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    sync(d);
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    peak = peak_mib(d);
  }
  std::sort(t.begin(), t.end());
  return {t[t.size() / 2], peak};
}

// segment ids [batch, seq]: ~docs documents per row of random lengths; the last row stops early
// (padding). recurring: ids 0 1 0 1 ... instead of 0 1 2 3 (forces the dense-mask fallback).
at::Tensor packed_rows(int64_t batch, int64_t seq, int64_t docs, bool recurring, uint64_t seed) {
  std::mt19937_64 rng(seed);
  at::Tensor seg = at::full({batch, seq}, -1, at::kInt);
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t fill = b == batch - 1 ? seq * 3 / 4 : seq;
    // docs-1 random cut points in (0, fill): documents of random lengths averaging fill/docs.
    std::vector<int64_t> cuts{0, fill};
    for (int64_t i = 1; i < docs; ++i) cuts.push_back(std::uniform_int_distribution<int64_t>(1, fill - 1)(rng));
    std::sort(cuts.begin(), cuts.end());
    for (size_t i = 0; i + 1 < cuts.size(); ++i)
      seg[b].narrow(0, cuts[i], cuts[i + 1] - cuts[i]).fill_(static_cast<int>(recurring ? i % 2 : i));
  }
  return seg;
}

}  // namespace

int main(int argc, char** argv) {
  int64_t batch = 4, seq = 1024, docs = 8;
  int reps = 5;
  std::string device_name = at::hasCUDA() ? "cuda" : "cpu";
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--batch") batch = std::stoll(v);
    else if (k == "--seq") seq = std::stoll(v);
    else if (k == "--docs") docs = std::stoll(v);
    else if (k == "--reps") reps = std::stoi(v);
    else if (k == "--device") device_name = v;
    else {
      std::cerr << "unknown option " << k << "\n";
      return 2;
    }
  }
  const at::Device device(device_name);
  const at::ScalarType dtype = device.is_cuda() ? at::kBFloat16 : at::kFloat;
  std::unique_ptr<qtrain::test::AllocatorScope> counting;
  if (device.is_cpu()) counting = std::make_unique<qtrain::test::AllocatorScope>();
  std::printf("attention_bench: batch %lld × seq %lld, ~%lld documents per row, %s, %s, threads %d\n",
              static_cast<long long>(batch), static_cast<long long>(seq), static_cast<long long>(docs),
              device.str().c_str(), c10::toString(dtype), at::get_num_threads());
  const at::Tensor seg = packed_rows(batch, seq, docs, false, 1), seg_dense = packed_rows(batch, seq, docs, true, 1);

  {  // 1. attention alone
    auto gen = at::make_generator<at::CPUGeneratorImpl>(2);
    const auto opts = at::TensorOptions().dtype(at::kFloat);
    const at::Tensor q0 = at::randn({batch, 8, seq, 64}, gen, opts).to(device, dtype);
    const at::Tensor k0 = at::randn({batch, 4, seq, 64}, gen, opts).to(device, dtype);
    const at::Tensor v0 = at::randn({batch, 4, seq, 64}, gen, opts).to(device, dtype);
    const auto fwd_bwd = [&](const AttentionLayout& layout) {
      const at::Tensor q = q0.detach().requires_grad_(), k = k0.detach().requires_grad_(), v = v0.detach().requires_grad_();
      attend(q, k, v, layout).sum().backward();
    };
    const auto [td, pd] = measure(device, reps, [&] {
      fwd_bwd(AttentionLayout::for_rows(seg, batch, seq, std::nullopt, device));  // planned inside, as per forward
    });
    const auto [tm, pm] = measure(device, reps, [&] {
      AttentionLayout dense;
      dense.kind = AttentionLayout::Kind::kMask;
      dense.mask = build_attention_mask(seg, batch, seq, std::nullopt, device);
      fwd_bwd(dense);
    });
    std::printf("attention fwd+bwd  dense mask: %8.1f ms  peak %8.1f MiB\n", tm * 1e3, pm);
    std::printf("attention fwd+bwd  per doc   : %8.1f ms  peak %8.1f MiB   (%.2fx faster, %.2fx less memory)\n",
                td * 1e3, pd, tm / td, pm / pd);
  }

  {  // 2. the quickstart-sized model, forward + backward through LoRA
    ModelConfig c;
    c.family = ModelFamily::kLlama;
    c.vocab_size = 512, c.hidden_size = 128, c.intermediate_size = 352, c.num_hidden_layers = 4;
    c.num_attention_heads = 4, c.num_key_value_heads = 4, c.head_dim = 32, c.rms_norm_eps = 1e-5;
    LoadOptions lo;
    lo.dtype = dtype;
    lo.device = device;
    at::Generator gen = at::globalContext().defaultGenerator(device);
    LlamaModel m = LlamaModel::random(c, lo, gen);
    LoraSpec spec;
    spec.config.rank = 16;
    m.add_lora(spec, gen);
    const at::Tensor ids = at::randint(c.vocab_size, {batch, seq}, at::kLong);
    const auto positions = [&](const at::Tensor& s) {  // restart per document
      at::Tensor pos = at::zeros({batch, seq}, at::kLong);
      auto sa = s.accessor<int, 2>();
      auto pa = pos.accessor<int64_t, 2>();
      for (int64_t b = 0; b < batch; ++b)
        for (int64_t t = 1; t < seq; ++t) pa[b][t] = sa[b][t] == sa[b][t - 1] ? pa[b][t - 1] + 1 : 0;
      return pos;
    };
    const at::Tensor pos = positions(seg), pos_dense = positions(seg_dense);
    const auto step = [&](const at::Tensor& s, const at::Tensor& p) {
      const at::Tensor h = m.hidden_states(ids, s, p);
      at::cross_entropy_loss(m.lm_head(h).flatten(0, 1).to(at::kFloat), ids.to(device).flatten()).backward();
    };
    const auto [td, pd] = measure(device, reps, [&] { step(seg, pos); });
    const auto [tm, pm] = measure(device, reps, [&] { step(seg_dense, pos_dense); });
    std::printf("model fwd+bwd      dense mask: %8.1f ms  peak %8.1f MiB\n", tm * 1e3, pm);
    std::printf("model fwd+bwd      per doc   : %8.1f ms  peak %8.1f MiB   (%.2fx faster, %.2fx less memory)\n",
                td * 1e3, pd, tm / td, pm / pd);
  }
  return 0;
}
