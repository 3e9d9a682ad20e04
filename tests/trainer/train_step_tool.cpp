// Test tool for the training-parity oracle (tests/oracle/test_training_parity.py): runs qtrain's real
// training step (trainer/step.h: the loop's own train_step, with the recipe's optimizer) on a given
// model, adapter init and batch.
//   train_step_tool MODEL_DIR ADAPTER_DIR BATCH.safetensors OUT_DIR --steps N --lr LR [--quantize] [--times]
// BATCH holds input_ids [B, T] and labels [B, T] (-100 = untrained; labels[t] is position t's token).
// OUT_DIR receives losses.txt (one loss per step), grads.safetensors (step 1, PEFT names) and
// adapter/ (the PEFT adapter after N steps).
#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>

#include "data/io/peft_adapter.h"
#include "data/io/safetensors.h"
#include "trainer/model/lora.h"
#include "trainer/model/model.h"
#include "trainer/optimizer.h"
#include "trainer/step.h"

int main(int argc, char** argv) {
  using namespace qtrain;
  namespace fs = std::filesystem;
  if (argc < 5) {
    std::cerr << "usage: train_step_tool MODEL_DIR ADAPTER_DIR BATCH.safetensors OUT_DIR --steps N --lr LR [--quantize] [--times]\n";
    return 2;
  }
  int steps = 1;
  double lr = 1e-3;
  bool quantize = false;
  bool times = false;  // each step's wall time on stderr (the first step pays for fresh pages and first calls)
  for (int i = 5; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--steps") steps = std::stoi(argv[++i]);
    else if (a == "--lr") lr = std::stod(argv[++i]);
    else if (a == "--quantize") quantize = true;
    else if (a == "--times") times = true;
  }
  try {
    LoadOptions lo;
    if (quantize) lo.quantize = ops::QuantParams{};
    LlamaModel m = LlamaModel::load(argv[1], lo);
    AdapterInfo info;
    load_peft_adapter(argv[2], &info);
    apply_peft_adapter(m, argv[2]);
    auto batch_file = safetensors::File::open(argv[3]);
    const at::Tensor ids = batch_file->tensor("input_ids").to(at::kLong);
    const at::Tensor labels = batch_file->tensor("labels").to(at::kLong);
    const int64_t b = ids.size(0), t = ids.size(1);
    const at::Tensor pos = at::arange(t, at::kLong).repeat({b, 1});
    const at::Tensor seg = at::zeros({b, t}, at::kInt);
    const fs::path out = argv[4];
    fs::create_directories(out);
    // The recipe defaults (AdamW 32-bit, betas 0.9/0.999, eps 1e-8), no weight decay, no clipping:
    // what the oracle configures on the transformers + peft side.
    auto opt = make_optimizer(OptimizerSection{}, /*weight_decay=*/0.0, m.lora_parameters());
    Batch batch;
    batch.input_ids = ids;
    batch.labels = labels;
    batch.positions = pos;
    batch.segment_ids = seg;
    batch.num_target_tokens = (labels.narrow(1, 1, t - 1) != -100).sum().item<int64_t>();
    std::ofstream losses(out / "losses.txt");
    losses.precision(17);
    RunContext ctx;
    ctx.training = true;
    for (int s = 1; s <= steps; ++s) {
      StepSettings ss;
      ss.update = s;
      ss.lr = lr;
      const auto t0 = std::chrono::steady_clock::now();
      const StepResult r = train_step(m, *opt, {batch}, ss, ctx);
      if (times) {
        std::cerr << "step " << s << ": "
                  << std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() << " ms\n";
      }
      if (!r.finite) throw std::runtime_error("step " + std::to_string(s) + ": loss or gradient not finite");
      losses << r.loss << "\n";
      if (s == 1) {  // the gradients stay in .grad after the step
        std::map<std::string, at::Tensor> g;
        for (const auto& [n, p] : opt->params()) g[n] = p.grad();
        safetensors::save(out / "grads.safetensors", g);
      }
    }
    save_peft_adapter(out / "adapter", opt->params(), info);
  } catch (const std::exception& e) {
    std::cerr << "train_step_tool: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
