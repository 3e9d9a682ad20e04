// Times qtrain's QLoRA linear (ops/qlora_linear.h) forward + backward on the CPU, for
// scripts/bench/qlora_linear_cpu.py, which times PEFT + bitsandbytes on the same shapes in the same run.
//
//   qlora_linear_bench TOKENS K N RANK THREADS REPS
// W [N, K] is random N(0, 0.02) quantized to NF4 + double quant (blocksize 64); x [TOKENS, K] fp32 requires
// grad; A [r, K], B [N, r] fp32 (B random, not PEFT's zeros, so no product is trivially zero); alpha = 2r;
// no dropout. One iteration = y = qlora_linear(x); y.backward(gy); grads cleared. One warm-up iteration,
// then REPS timed ones. Prints "best_s median_s" on stdout.
// Exit status: 0 ok, 1 failure, 2 usage error.
#include "ops/nf4.h"
#include "ops/qlora_linear.h"

#include <ATen/Parallel.h>
#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <iostream>
#include <string>
#include <vector>

namespace {

int run(int64_t tokens, int64_t k, int64_t n, int64_t rank, int threads, int reps) {
  at::set_num_threads(threads);
  at::Generator gen = at::detail::createCPUGenerator(1234);
  const at::Tensor w = at::randn({n, k}, gen, at::kFloat) * 0.02;
  const qtrain::ops::QuantState ws = qtrain::ops::quantize_4bit(w, qtrain::ops::QuantParams{});
  qtrain::ops::LoraConfig cfg;
  cfg.rank = rank;
  cfg.alpha = 2.0 * static_cast<double>(rank);
  qtrain::ops::LoraWeights lw = qtrain::ops::init_lora(k, n, cfg, gen);
  at::Tensor A = lw.A.set_requires_grad(true);
  at::Tensor B = (at::randn({n, rank}, gen, at::kFloat) * 0.01).set_requires_grad(true);
  at::Tensor x = at::randn({tokens, k}, gen, at::kFloat).set_requires_grad(true);
  const at::Tensor gy = at::randn({tokens, n}, gen, at::kFloat);
  qtrain::ops::QLoraLinearArgs args;
  args.weight = &ws;
  args.A = A;
  args.B = B;
  args.scale = qtrain::ops::lora_scale(cfg);

  std::vector<double> times;
  for (int r = 0; r <= reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    const at::Tensor y = qtrain::ops::qlora_linear(x, args);
    y.backward(gy);
    const auto t1 = std::chrono::steady_clock::now();
    for (at::Tensor* t : {&x, &A, &B}) t->mutable_grad() = at::Tensor();
    if (r > 0) times.push_back(std::chrono::duration<double>(t1 - t0).count());  // r = 0 warms up
  }
  std::sort(times.begin(), times.end());
  std::cout << times.front() << " " << times[times.size() / 2] << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 7) {
    std::cerr << "usage: qlora_linear_bench TOKENS K N RANK THREADS REPS\n";
    return 2;
  }
  try {
    const int reps = std::stoi(argv[6]);
    if (reps < 1) throw std::invalid_argument("REPS must be >= 1");
    return run(std::stoll(argv[1]), std::stoll(argv[2]), std::stoll(argv[3]), std::stoll(argv[4]),
               std::stoi(argv[5]), reps);
  } catch (const std::logic_error& e) {
    std::cerr << "qlora_linear_bench: bad argument: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "qlora_linear_bench: " << e.what() << "\n";
    return 1;
  }
}
