// qtrain quantize MODEL_DIR --out DIR: write a bitsandbytes 4-bit checkpoint (the files transformers
// writes with BitsAndBytesConfig(load_in_4bit=True)), so later loads skip quantization.
// qtrain dequantize MODEL_DIR --out DIR: the reverse, a dense checkpoint from a 4-bit one.
#include <chrono>
#include <fstream>
#include <iostream>

#include "data/error.h"
#include "data/io/bnb_format.h"
#include "ops/dtype_names.h"
#include "trainer/cli/cli.h"
#include "trainer/cli/cli_options.h"
#include "trainer/model/model.h"
#include "data/io/model_writer.h"

namespace qtrain::cli {
namespace {

// transformers writes no torch_dtype for float32 checkpoints, and "float32" or "auto" in some versions.
at::ScalarType checkpoint_dtype(const ModelConfig& c) { return ops::parse_dtype(c.torch_dtype).value_or(at::kFloat); }

}  // namespace

int run_quantize(const std::vector<std::string>& args) {
  VerbSpec spec;
  spec.usage = "qtrain quantize MODEL_DIR --out DIR [--quant-type nf4|fp4] [--blocksize 64] [--no-double-quant] [--device cpu|cuda]";
  std::string model, out, quant_type, device, compute_dtype, shard;
  int64_t blocksize = 64;
  spec.options.add_options()
      ("out", po::value(&out)->required(), "output model directory (must not exist, or be empty)")
      ("quant-type", po::value(&quant_type)->default_value("nf4"), "nf4 or fp4")
      ("blocksize", po::value(&blocksize)->default_value(64), "elements per absmax block: 32, 64, ..., 4096 (transformers expects 64)")
      ("no-double-quant", "store the absmax in float32 instead of quantizing it again")
      ("compute-dtype", po::value(&compute_dtype)->default_value("bfloat16"), "bnb_4bit_compute_dtype recorded in config.json")
      ("device", po::value(&device)->default_value("cpu"), "where to quantize: cpu, cuda or cuda:N")
      ("max-shard-size", po::value(&shard)->default_value("5GB"), "largest safetensors shard");
  spec.hidden.add_options()("model", po::value(&model)->required(), "model directory");
  spec.positional.add("model", 1);
  const auto vm = parse_verb(args, spec);
  if (!vm) return 0;

  ops::QuantParams qp;
  if (quant_type == "nf4") qp.type = ops::QuantType::kNF4;
  else if (quant_type == "fp4") qp.type = ops::QuantType::kFP4;
  else throw UsageError("--quant-type '" + quant_type + "' must be nf4 or fp4");
  if (!ops::valid_blocksize(blocksize))
    throw UsageError("--blocksize " + std::to_string(blocksize) + " must be " + ops::kBlocksizeChoices);
  qp.blocksize = blocksize;
  qp.double_quant = !vm->count("no-double-quant");
  const at::ScalarType compute = parse_dtype_option(compute_dtype, "compute-dtype");
  const uint64_t max_shard = parse_byte_size(shard, "max-shard-size");

  const std::filesystem::path dir(resolve_model_arg(model, "model"));
  const ModelConfig cfg = parse_model_config(dir / "config.json");
  if (cfg.bnb_4bit) throw UsageError(dir.string() + " is already a bitsandbytes 4-bit checkpoint");
  LoadOptions opts;
  opts.dtype = checkpoint_dtype(cfg);  // unquantized tensors keep the checkpoint's dtype
  opts.device = parse_device_option(device, "device");
  opts.quantize = qp;
  const auto t0 = std::chrono::steady_clock::now();
  const LlamaModel m = LlamaModel::load(dir, opts);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  ModelDirContents c;
  c.config = read_model_config_json(dir);
  c.config["quantization_config"] = bnb::quantization_config(qp, compute);
  c.tensors = m.state_tensors();
  c.copy_files_from = dir;
  c.max_shard_bytes = max_shard;
  write_model_dir(out, c);
  std::cerr << "quantize: " << dir.string() << " → " << out << " (" << quant_type << ", blocksize " << blocksize
            << (qp.double_quant ? ", double quant" : "") << ", quantized in " << secs << " s)\n";
  return 0;
}

int run_dequantize(const std::vector<std::string>& args) {
  VerbSpec spec;
  spec.usage = "qtrain dequantize MODEL_DIR --out DIR [--dtype bfloat16|float16|float32]";
  std::string model, out, dtype, shard;
  spec.options.add_options()
      ("out", po::value(&out)->required(), "output model directory (must not exist, or be empty)")
      ("dtype", po::value(&dtype)->default_value("bfloat16"), "dtype of every weight written")
      ("max-shard-size", po::value(&shard)->default_value("5GB"), "largest safetensors shard");
  spec.hidden.add_options()("model", po::value(&model)->required(), "model directory");
  spec.positional.add("model", 1);
  if (!parse_verb(args, spec)) return 0;
  LoadOptions opts;
  opts.dtype = parse_dtype_option(dtype, "dtype");
  const uint64_t max_shard = parse_byte_size(shard, "max-shard-size");
  const std::filesystem::path dir(resolve_model_arg(model, "model"));
  LlamaModel m = LlamaModel::load(dir, opts);
  ModelDirContents c;
  c.config = read_model_config_json(dir);
  c.config.erase("quantization_config");
  set_config_dtype(c.config, ops::dtype_name(opts.dtype));
  c.tensors = m.state_tensors();
  m.for_each_linear([&](const std::string& name, const Linear& l) {
    if (!l.qweight) return;
    for (auto it = c.tensors.begin(); it != c.tensors.end();)  // drop the 4-bit pieces
      it = it->first.rfind(name + ".weight", 0) == 0 ? c.tensors.erase(it) : std::next(it);
    c.tensors[name + ".weight"] = l.dense_weight(opts.dtype);
    if (l.bias.defined()) c.tensors[name + ".bias"] = l.bias;
  });
  c.copy_files_from = dir;
  c.max_shard_bytes = max_shard;
  write_model_dir(out, c);
  std::cerr << "dequantize: " << dir.string() << " → " << out << " (" << ops::dtype_name(opts.dtype) << ")\n";
  return 0;
}

}  // namespace qtrain::cli
