// qtrain forward MODEL_DIR --ids 1,403,407 [--ids ...] [--dtype ...] [--device ...] --out FILE
// Writes float32 `logits` [seq, vocab] for one sequence, or [batch, seq, vocab] plus `attention_mask`
// [batch, seq] when several --ids are given (padded on --pad-side with id 0 and masked).
#include <ATen/ATen.h>

#include <iostream>

#include "data/error.h"
#include "data/io/safetensors.h"
#include "trainer/cli/cli.h"
#include "trainer/cli/cli_options.h"
#include "trainer/model/model.h"
#include "trainer/model/lora.h"

namespace qtrain::cli {

int run_forward(const std::vector<std::string>& args) {
  VerbSpec spec;
  spec.usage = "qtrain forward MODEL_DIR --ids 1,403,407 [--ids ...] [--adapter DIR] [--dtype float32|bfloat16] [--device cpu|cuda] --out FILE.safetensors";
  std::string model, out, dtype, device, pad_side, adapter;
  std::vector<std::string> id_lists;
  spec.options.add_options()
      ("ids", po::value(&id_lists)->required(), "comma-separated token ids; repeat for a padded batch")
      ("dtype", po::value(&dtype)->default_value("float32"), "weights and compute dtype: float32, bfloat16, float16")
      ("device", po::value(&device)->default_value("cpu"), "cpu, cuda or cuda:N")
      ("adapter", po::value(&adapter), "a PEFT LoRA adapter directory to apply")
      ("pad-side", po::value(&pad_side)->default_value("right"), "where a batch is padded: right or left")
      ("out", po::value(&out)->required(), "output safetensors file (float32 tensor 'logits')");
  spec.hidden.add_options()("model", po::value(&model)->required(), "model directory");
  spec.positional.add("model", 1);
  if (!parse_verb(args, spec)) return 0;
  if (pad_side != "right" && pad_side != "left") throw UsageError("--pad-side '" + pad_side + "' must be right or left");

  // Every argument is checked before the model is read.
  std::vector<std::vector<int64_t>> seqs;
  int64_t seq = 0;
  for (const auto& s : id_lists) {
    seqs.push_back(parse_id_list(s, "ids"));
    seq = std::max<int64_t>(seq, seqs.back().size());
  }
  LoadOptions opts;
  opts.dtype = parse_dtype_option(dtype, "dtype");
  opts.device = parse_device_option(device, "device");
  if (opts.device.is_cuda() && !at::hasCUDA()) throw UsageError("--device " + device + ": no CUDA device is available");
  LlamaModel m = LlamaModel::load(resolve_model_arg(model, "model"), opts);
  if (!adapter.empty()) apply_peft_adapter(m, resolve_model_arg(adapter, "adapter"));
  const int64_t batch = seqs.size();
  at::Tensor ids = at::zeros({batch, seq}, at::kLong);
  at::Tensor mask = at::zeros({batch, seq}, at::kLong);
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t n = seqs[b].size(), start = pad_side == "left" ? seq - n : 0;
    ids[b].narrow(0, start, n).copy_(at::tensor(seqs[b], at::kLong));
    mask[b].narrow(0, start, n).fill_(1);
  }
  at::Tensor logits = m.forward(ids, batch > 1 ? mask : at::Tensor()).to(at::kCPU, at::kFloat);
  std::map<std::string, at::Tensor> tensors;
  if (batch == 1) {
    tensors["logits"] = logits[0];
  } else {
    tensors["logits"] = logits;
    tensors["attention_mask"] = mask;
  }
  safetensors::save(out, tensors);
  std::cerr << "forward: " << batch << " × " << seq << " tokens → logits " << tensors["logits"].sizes() << " in " << out << "\n";
  return 0;
}

}  // namespace qtrain::cli
