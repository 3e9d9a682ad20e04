// NF4 + double-quant dequantize throughput against the machine's own copy bandwidth, in the same run:
//   nf4_dequant_bench [--device cuda|cpu] [--reps 50]
// Bytes counted as performance.md §3.1 does: packed codes + uint8 scales + nested scales read, output
// written. The peer is a device-to-device copy of the output-sized tensor (read + write), the roofline
// a memory-bound kernel can approach; goal G3 is >= 85% of it on an H100 (>= 2.85 TB/s; 4096x4096 bf16 in
// <= 15 us, 4096x11008 in <= 40 us). On CUDA each timing is a batch of back-to-back launches between two
// synchronisations (launch latency would otherwise dominate a 15 us kernel), best of --reps; blocksizes 64
// (Hugging Face checkpoints) and 256, into a fresh tensor (dequantize_4bit) and into a reused buffer
// (dequantize_4bit_out: what the QLoRA linear could do).
#include <ATen/ATen.h>

#include <chrono>
#include <cstdio>
#include <string>

#if defined(QTRAIN_WITH_CUDA)
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAFunctions.h>
#endif

#include "ops/nf4.h"

namespace {

void sync(const at::Device& d) {
#if defined(QTRAIN_WITH_CUDA)
  if (d.is_cuda()) c10::cuda::device_synchronize();
#endif
}

// Seconds per call of f: the best over `reps` of a batch of calls (20 on a GPU, 1 on the CPU) between syncs.
template <class F>
double best_seconds(const at::Device& d, int reps, F&& f) {
  const int batch = d.is_cuda() ? 20 : 1;
  f();  // warm-up
  sync(d);
  double best = 1e30;
  for (int i = 0; i < reps; ++i) {
    const auto t = std::chrono::steady_clock::now();
    for (int k = 0; k < batch; ++k) f();
    sync(d);
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count() / batch);
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  std::string device = at::hasCUDA() ? "cuda" : "cpu";
  int reps = at::hasCUDA() ? 50 : 5;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--device" && i + 1 < argc) device = argv[++i];
    else if (a == "--reps" && i + 1 < argc) reps = std::stoi(argv[++i]);
    else {
      std::fprintf(stderr, "nf4_dequant_bench: unknown argument '%s'\n", a.c_str());
      return 2;
    }
  }
  const at::Device dev(device);
  std::string card = "cpu";
#if defined(QTRAIN_WITH_CUDA)
  if (dev.is_cuda()) card = at::cuda::getCurrentDeviceProperties()->name;
#endif
  std::printf("NF4+DQ dequantize vs copy on %s (%s; best of %d)\n", dev.str().c_str(), card.c_str(), reps);
  std::printf("%-14s %-5s %-4s %10s %10s %10s %12s %12s %8s %8s\n", "shape", "out", "bs", "dequant us", "out= us",
              "copy us", "dequant GB/s", "copy GB/s", "ratio", "out= ratio");
  const std::vector<int64_t> blocksizes = dev.is_cuda() ? std::vector<int64_t>{64, 256} : std::vector<int64_t>{64};
  for (const auto& shape : {std::vector<int64_t>{4096, 4096}, std::vector<int64_t>{11008, 4096}, std::vector<int64_t>{14336, 4096}}) {
    const at::Tensor w = at::randn(shape, at::TensorOptions().device(dev).dtype(at::kBFloat16));
    for (const int64_t bs : blocksizes) {
      const qtrain::ops::QuantState s = qtrain::ops::quantize_4bit(w, qtrain::ops::QuantParams{qtrain::ops::QuantType::kNF4, bs, true});
      for (const at::ScalarType out_t : {at::kBFloat16, at::kFloat}) {
        at::Tensor out;
        const double t_deq = best_seconds(dev, reps, [&] { out = qtrain::ops::dequantize_4bit(s, out_t); });
        const at::Tensor src = at::empty_like(out);
        at::Tensor dst = at::empty_like(out);
        const double t_copy = best_seconds(dev, reps, [&] { dst.copy_(src); });
        const double t_out = best_seconds(dev, reps, [&] { qtrain::ops::dequantize_4bit_out(s, dst); });
        const double n = static_cast<double>(w.numel());
        const double deq_bytes = n / 2 + s.absmax.numel() + 4.0 * s.nested_absmax.numel() + n * out.element_size();
        const double copy_bytes = 2.0 * n * out.element_size();
        const double deq_gbs = deq_bytes / t_deq / 1e9, copy_gbs = copy_bytes / t_copy / 1e9;
        const double out_ratio = deq_bytes / t_out / 1e9 / copy_gbs;
        std::printf("%-14s %-5s %-4lld %10.1f %10.1f %10.1f %12.1f %12.1f %7.2fx %7.2fx\n",
                    (std::to_string(shape[0]) + "x" + std::to_string(shape[1])).c_str(), out_t == at::kFloat ? "fp32" : "bf16",
                    static_cast<long long>(bs), t_deq * 1e6, t_out * 1e6, t_copy * 1e6, deq_gbs, copy_gbs,
                    deq_gbs / copy_gbs, out_ratio);
        if (dev.is_cpu()) {
          // Where the CPU time goes: the nested-scale decode, and the 4-bit kernel per instruction set writing
          // into a preallocated output (no page faults of a fresh allocation), against the same copy.
          namespace cpu = qtrain::ops::nf4_cpu;
          at::Tensor scales = at::empty({s.absmax.numel()}, at::kFloat);
          const double t_scales = best_seconds(dev, reps, [&] {
            cpu::decode_nested_absmax(s.absmax.data_ptr<uint8_t>(), s.absmax.numel(), s.nested_absmax.data_ptr<float>(),
                                      s.nested_quant_map.data_ptr<float>(), s.nested_offset, scales.data_ptr<float>());
          });
          std::printf("    scales decode %.1f us;", t_scales * 1e6);
          for (const cpu::CpuIsa isa : {cpu::CpuIsa::kScalar, cpu::CpuIsa::kAvx2, cpu::CpuIsa::kAvx512}) {
            if (!cpu::cpu_isa_supported(isa)) continue;
            const double t = best_seconds(dev, reps, [&] {
              if (out_t == at::kFloat) {
                cpu::dequantize_isa(s.packed.data_ptr<uint8_t>(), scales.data_ptr<float>(), w.numel(), s.blocksize,
                                    s.type, isa, dst.data_ptr<float>());
              } else {
                cpu::dequantize_isa(s.packed.data_ptr<uint8_t>(), scales.data_ptr<float>(), w.numel(), s.blocksize,
                                    s.type, isa, dst.data_ptr<c10::BFloat16>());
              }
            });
            const double gbs = deq_bytes / t / 1e9;
            std::printf(" %s kernel %.1f us %.1f GB/s (%.2fx copy);", cpu::cpu_isa_name(isa), t * 1e6, gbs,
                        gbs / copy_gbs);
          }
          std::printf("\n");
        }
      }
    }
  }
  if (dev.is_cuda()) {
    std::printf("goal G3 (H100 SXM): ratio >= 0.85 of copy and >= 2850 GB/s; 4096x4096 bf16 <= 15 us, 11008x4096 bf16 <= 40 us\n");
  }
  return 0;
}
