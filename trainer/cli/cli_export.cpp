// qtrain export RUN_DIR --format merged|gptq [--out DIR] [GPTQ, calibration and report options]
// qtrain export --model DIR [--adapter DIR] --format merged|gptq --out DIR [...]
// From a run: its recipe's export section gives the defaults (every key resolved in config.yaml),
// options given on the command line override them.
#include <iostream>

#include "data/error.h"
#include "data/io/model_writer.h"
#include "export/export_model.h"
#include "ops/dtype_names.h"
#include "trainer/cli/cli.h"
#include "trainer/cli/cli_options.h"
#include "trainer/config.h"
#include "trainer/metrics_log.h"

namespace qtrain::cli {
namespace {

// Where exporting runs: auto is CUDA when available; the compute dtype as training resolves it.
void place(ExportJob& job, const std::string& device, const std::string& compute) {
  job.device = device == "auto" ? (at::hasCUDA() ? at::Device(at::kCUDA) : at::Device(at::kCPU)) : parse_device_option(device, "device");
  if (job.device.is_cuda() && !at::hasCUDA()) throw UsageError("device " + device + ": no CUDA device is available");
  job.compute = compute == "auto" ? (job.device.is_cuda() ? at::kBFloat16 : at::kFloat) : parse_dtype_option(compute, "compute-dtype");
}

// The recipe's choices in the spelling of the command line's options (a switch without default: a new
// enumerator is a compile warning here, never a wrong string).
std::string device_name(DeviceChoice d) {
  switch (d) {
    case DeviceChoice::kAuto: return "auto";
    case DeviceChoice::kCpu: return "cpu";
    case DeviceChoice::kCuda: return "cuda";
  }
  throw std::logic_error("unknown DeviceChoice");
}
std::string dtype_name(DtypeChoice d) {
  switch (d) {
    case DtypeChoice::kAuto: return "auto";
    case DtypeChoice::kFloat32: return "float32";
    case DtypeChoice::kBFloat16: return "bfloat16";
  }
  throw std::logic_error("unknown DtypeChoice");
}

// The exporter's messages; with json each is a {"kind": "message"} line like the training log's.
ExportMessages messages_to_stderr(const ConsoleOptions& c) {
  return [json = c.json](const std::string& s) { std::cerr << console_line(json, "export: " + s); };
}

}  // namespace

void export_after_training(const Recipe& r) {
  ExportJob job = export_job_for_run(r.output_dir, r.export_);
  // The default place is inside the run, which this run owns: a resumed run that finishes again
  // replaces its export. An explicit export.out is never replaced.
  job.overwrite = r.export_.out.empty();
  place(job, device_name(r.training.device), dtype_name(r.training.compute_dtype));
  job.console = {r.logging.console == "json", r.logging.quiet};  // the run's console settings
  const ExportResult res = run_export(job, messages_to_stderr(job.console));
  std::cerr << console_line(job.console.json, "export: " + res.out.string() + " (report: " + (res.out / "export_report.md").string() + ")");
}

int run_export(const std::vector<std::string>& args) {
  VerbSpec spec;
  spec.usage =
      "qtrain export RUN_DIR --format merged|gptq|awq|gguf [--out DIR] [--overwrite]\n"
      "       qtrain export --model DIR [--adapter DIR] [--base-quant nf4|fp4|none] --format merged|gptq|awq|gguf --out DIR\n"
      "  GPTQ: [--bits 4|8] [--group-size 128] [--sym|--asym] [--desc-act [--static-groups]] [--damp 0.01]\n"
      "  AWQ:  [--group-size 128] [--no-zero-point]      GGUF: [--gguf-type q4_k_m|q8_0|f16]\n"
      "  calibration (GPTQ, AWQ): [--calib recipe|FILE] [--calib-samples 128] [--calib-len 2048] [--calib-trained-only]\n"
      "  report: [--eval-text FILE] [--eval-len 2048] [--eval-windows N] [--no-report]";
  ExportSection e;
  std::string run, model, adapter, base_quant, format, out, dtype, device, compute, shard, calib, eval_text, gguf_type;
  int64_t blocksize = 64;
  spec.options.add_options()
      ("format", po::value(&format)->required(), "merged (bf16, adapters folded in), gptq (4/8-bit GPTQ v1), awq (4-bit AWQ GEMM) or gguf (llama.cpp)")
      ("out", po::value(&out), "output model directory (default for a run: RUN_DIR/export-<format>)")
      ("overwrite", "replace a non-empty --out (the old one is removed once the new one is complete)")
      ("model", po::value(&model), "base model directory (instead of RUN_DIR)")
      ("adapter", po::value(&adapter), "PEFT adapter directory to merge (with --model)")
      ("base-quant", po::value(&base_quant), "with --model: how the base was quantized in training: nf4, fp4 or none (default: nf4 with --adapter, none without)")
      ("blocksize", po::value(&blocksize)->default_value(64), "with --model: that quantization's blocksize")
      ("no-double-quant", "with --model: that quantization had no double quantization")
      ("dtype", po::value(&dtype)->default_value(e.dtype), "unquantized weights written: auto (bfloat16 merged, float16 gptq), bfloat16, float16, float32")
      ("bits", po::value(&e.bits)->default_value(e.bits), "GPTQ bits: 4 or 8")
      ("group-size", po::value(&e.group_size)->default_value(e.group_size), "GPTQ group size (-1: one group per row)")
      ("sym", "symmetric grid (the default; what vLLM's Marlin kernels run)")
      ("asym", "asymmetric grid (a zero point per group)")
      ("desc-act", "act-order: quantize columns by decreasing Hessian diagonal (g_idx permuted)")
      ("static-groups", "with --desc-act: group grids from the unmodified weight, g_idx stays monotonic")
      ("no-zero-point", "AWQ: symmetric grid (stored with zeros 8) instead of a zero point per group")
      ("gguf-type", po::value(&gguf_type), "GGUF tensor types: q4_k_m (llama-quantize's Q4_K_M), q8_0 or f16")
      ("no-true-sequential", "collect every sub-layer's Hessian in one pass instead of group by group")
      ("damp", po::value(&e.damp)->default_value(e.damp), "GPTQ damping, relative to the mean Hessian diagonal")
      ("calib", po::value(&calib)->default_value(e.calib), "calibration data: recipe (the run's training data) or a text file")
      ("calib-samples", po::value(&e.calib_samples)->default_value(e.calib_samples), "calibration sequences")
      ("calib-len", po::value(&e.calib_len)->default_value(e.calib_len), "tokens per calibration sequence (at most)")
      ("calib-trained-only", "Hessians from the positions that predict trained tokens only (--calib recipe)")
      ("eval-text", po::value(&eval_text), "report: a text corpus for perplexity and KL (e.g. WikiText-2's wiki.test.raw)")
      ("eval-len", po::value(&e.eval_len)->default_value(e.eval_len), "report: tokens per evaluation window")
      ("eval-windows", po::value(&e.eval_windows)->default_value(e.eval_windows), "report: windows evaluated (0 = all)")
      ("no-report", "skip the quality evaluation (export_report still gives sizes, per-layer errors, times)")
      ("device", po::value(&device)->default_value("auto"), "where to merge, calibrate and quantize: auto, cpu, cuda, cuda:N")
      ("compute-dtype", po::value(&compute)->default_value("auto"), "activations while exporting: auto (float32 on CPU, bfloat16 on CUDA), float32, bfloat16")
      ("max-shard-size", po::value(&shard)->default_value("5GB"), "largest safetensors shard");
  add_console_options(spec);
  spec.hidden.add_options()("run", po::value(&run), "run directory");
  spec.positional.add("run", 1);
  const auto vm = parse_verb(args, spec);
  if (!vm) return 0;
  auto given = [&](const char* name) { return vm->count(name) && !(*vm)[name].defaulted(); };

  if (run.empty() == model.empty()) throw UsageError("give either a run directory or --model DIR (not both)");
  if (!run.empty() && given("adapter")) throw UsageError("--adapter goes with --model; a run's adapter is RUN_DIR/adapter");
  ExportJob job;
  if (!run.empty()) {
    job = export_job_for_run(run, job.settings);
    e = ExportSection{job.run->export_};  // the recipe's export section: the defaults for this run
    // Options given here override it.
    if (given("dtype")) e.dtype = dtype;
    if (given("bits")) e.bits = (*vm)["bits"].as<int64_t>();
    if (given("group-size")) e.group_size = (*vm)["group-size"].as<int64_t>();
    if (given("damp")) e.damp = (*vm)["damp"].as<double>();
    if (given("calib")) e.calib = calib;
    if (given("calib-samples")) e.calib_samples = (*vm)["calib-samples"].as<int64_t>();
    if (given("calib-len")) e.calib_len = (*vm)["calib-len"].as<int64_t>();
    if (given("eval-len")) e.eval_len = (*vm)["eval-len"].as<int64_t>();
    if (given("eval-windows")) e.eval_windows = (*vm)["eval-windows"].as<int64_t>();
  } else {
    e.dtype = dtype;
    e.calib = calib;
    job.model_dir = resolve_model_arg(model, "model");
    job.adapter_dir = resolve_model_arg(adapter, "adapter");
    if (!std::filesystem::is_directory(job.model_dir)) throw UsageError("--model " + model + " is not a directory");
    // An adapter was trained against a 4-bit base (QLoRA: NF4 unless told otherwise); a base exported
    // alone is taken as it is stored.
    if (base_quant.empty()) base_quant = adapter.empty() ? "none" : "nf4";
    if (base_quant == "nf4" || base_quant == "fp4") {
      if (!ops::valid_blocksize(blocksize))
        throw UsageError("--blocksize " + std::to_string(blocksize) + " must be " + ops::kBlocksizeChoices);
      job.base_quant = ops::QuantParams{base_quant == "nf4" ? ops::QuantType::kNF4 : ops::QuantType::kFP4, blocksize,
                                        !vm->count("no-double-quant")};
    } else if (base_quant != "none") {
      throw UsageError("--base-quant '" + base_quant + "' must be nf4, fp4 or none");
    }
  }
  if (format == "merged") e.format = ExportFormat::kMerged;
  else if (format == "gptq") e.format = ExportFormat::kGptq;
  else if (format == "awq") e.format = ExportFormat::kAwq;
  else if (format == "gguf") e.format = ExportFormat::kGguf;
  else throw UsageError("--format '" + format + "' must be merged, gptq, awq or gguf");
  if (vm->count("no-zero-point")) e.zero_point = false;
  if (!gguf_type.empty()) e.gguf_type = gguf_type;
  if (vm->count("sym") && vm->count("asym")) throw UsageError("--sym and --asym contradict each other");
  if (vm->count("sym")) e.sym = true;
  if (vm->count("asym")) e.sym = false;
  if (vm->count("desc-act")) e.desc_act = true;
  if (vm->count("static-groups")) e.static_groups = true;
  if (vm->count("no-true-sequential")) e.true_sequential = false;
  if (vm->count("calib-trained-only")) e.calib_trained_only = true;
  if (vm->count("no-report")) e.report = false;
  if (!out.empty()) e.out = out;
  if (!eval_text.empty()) e.eval_text = eval_text;
  validate_export_section(e, "qtrain export");
  job.settings = e;
  job.overwrite = vm->count("overwrite") > 0;
  job.max_shard_bytes = parse_byte_size(shard, "max-shard-size");
  place(job, device, compute);
  job.console = console_options(*vm);

  const ExportResult r = run_export(job, messages_to_stderr(job.console));
  std::cout << "export: " << format << " model in " << r.out.string() << " (report: " << (r.out / "export_report.md").string() << ")\n";
  return 0;
}

}  // namespace qtrain::cli
