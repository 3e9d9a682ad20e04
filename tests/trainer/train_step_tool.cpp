// Test tool for the training-parity oracle (tests/oracle/test_training_parity.py): runs qtrain's real
// training step (model, LoRA, token-weighted loss, bnb AdamW) on a given model, adapter init and batch.
//   train_step_tool MODEL_DIR ADAPTER_DIR BATCH.safetensors OUT_DIR --steps N --lr LR [--quantize]
// BATCH holds input_ids [B, T] and labels [B, T] (-100 = untrained; labels[t] is position t's token).
// OUT_DIR receives losses.txt (one loss per step), grads.safetensors (step 1, PEFT names) and
// adapter/ (the PEFT adapter after N steps).
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>

#include "data/io/safetensors.h"
#include "ops/adamw.h"
#include "trainer/loss.h"
#include "trainer/model/model.h"
#include "trainer/model/lora.h"

int main(int argc, char** argv) {
  using namespace qtrain;
  namespace fs = std::filesystem;
  if (argc < 5) {
    std::cerr << "usage: train_step_tool MODEL_DIR ADAPTER_DIR BATCH.safetensors OUT_DIR --steps N --lr LR [--quantize]\n";
    return 2;
  }
  int steps = 1;
  double lr = 1e-3;
  bool quantize = false;
  for (int i = 5; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--steps") steps = std::stoi(argv[++i]);
    else if (a == "--lr") lr = std::stod(argv[++i]);
    else if (a == "--quantize") quantize = true;
  }
  try {
    LoadOptions lo;
    if (quantize) lo.quantize = ops::QuantParams{};
    LlamaModel m = LlamaModel::load(argv[1], lo);
    AdapterInfo info;
    load_peft_adapter(argv[2], &info);
    apply_peft_adapter(m, argv[2]);
    auto batch = safetensors::File::open(argv[3]);
    const at::Tensor ids = batch->tensor("input_ids").to(at::kLong);
    const at::Tensor labels = batch->tensor("labels").to(at::kLong);
    const int64_t b = ids.size(0), t = ids.size(1);
    const at::Tensor pos = at::arange(t, at::kLong).repeat({b, 1});
    const at::Tensor seg = at::zeros({b, t}, at::kInt);
    const fs::path out = argv[4];
    fs::create_directories(out);
    auto params = m.lora_parameters();
    std::vector<ops::AdamWState> states;
    for (auto& [n, p] : params) states.push_back(ops::make_adamw_state(p));
    std::ofstream losses(out / "losses.txt");
    losses.precision(17);
    RunContext ctx;
    ctx.training = true;
    for (int s = 1; s <= steps; ++s) {
      for (auto& [n, p] : params) p.mutable_grad() = at::Tensor();
      LossSum ls = causal_lm_loss(m, m.hidden_states(ids, seg, pos, &ctx), labels);
      at::Tensor loss = ls.sum / static_cast<double>(ls.tokens);
      loss.backward();
      losses << loss.item<double>() << "\n";
      if (s == 1) {
        std::map<std::string, at::Tensor> g;
        for (auto& [n, p] : params) g[n] = p.grad();
        safetensors::save(out / "grads.safetensors", g);
      }
      for (std::size_t i = 0; i < params.size(); ++i)
        ops::adamw_step(params[i].second, params[i].second.grad(), states[i], s, ops::AdamWParams{lr});
    }
    save_peft_adapter(out / "adapter", params, info);
  } catch (const std::exception& e) {
    std::cerr << "train_step_tool: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
