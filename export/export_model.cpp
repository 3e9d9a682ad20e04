#include "export/export_model.h"

#include <chrono>
#include <fstream>
#include <iostream>

#include "data/dataset/dataset.h"
#include "data/error.h"
#include "data/io/atomic_file.h"
#include "data/io/gptq_format.h"
#include "data/io/model_writer.h"
#include "data/tokenizer/tokenizer.h"
#include "export/calibration.h"
#include "export/export_report.h"
#include "export/perplexity.h"
#include "ops/dtype_names.h"
#include "trainer/evaluate.h"
#include "trainer/model/lora.h"

namespace qtrain {
namespace fs = std::filesystem;
namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

nlohmann::ordered_json read_json(const fs::path& file) {
  std::ifstream in(file);
  if (!in) throw InputError(file.string() + ": cannot open");
  try {
    return nlohmann::ordered_json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw InputError(file.string() + ": not valid JSON: " + e.what());
  }
}

GptqSettings gptq_settings(const ExportSection& e) {
  GptqSettings s;
  s.bits = static_cast<int>(e.bits);
  s.group_size = e.group_size;
  s.sym = e.sym;
  s.desc_act = e.desc_act;
  s.static_groups = e.static_groups;
  s.damp_percent = e.damp;
  s.true_sequential = e.true_sequential;
  return s;
}

// The dtype of every weight written unquantized (embeddings, norms, lm_head, biases, merged linears).
at::ScalarType written_dtype(const ExportSection& e) {
  if (e.dtype == "auto") return e.format == ExportFormat::kGptq ? at::kHalf : at::kBFloat16;
  return *ops::parse_dtype(e.dtype);  // validated by validate_export_section
}

std::string quant_label(const ExportSection& e, const char* method) {
  return std::string(method) + " w" + std::to_string(e.bits) + " g" + std::to_string(e.group_size) + (e.sym ? "" : " asym") +
         (e.desc_act ? " act-order" : "");
}

uint64_t weight_bytes_on_disk(const fs::path& dir) {
  uint64_t n = 0;
  for (const auto& f : fs::directory_iterator(dir))
    if (f.path().extension() == ".safetensors") n += fs::file_size(f.path());
  return n;
}

class Exporter {
 public:
  Exporter(const ExportJob& job, const Progress& progress) : job_(job), progress_(progress) {}

  ExportResult run() {
    const ExportSection& e = job_.settings;
    const fs::path out = output_dir();
    report_.format = e.format == ExportFormat::kGptq ? "gptq" : "merged";
    report_.out = out;
    report_.model_dir = job_.model_dir;
    report_.adapter_dir = job_.adapter_dir;
    report_.settings = settings_json();
    // Refused before any work: an export that takes an hour must not fail at the last step.
    if (fs::exists(out) && !fs::is_empty(out) && !job_.overwrite)
      throw UsageError(out.string() + " already exists and is not empty; choose another --out, remove it, or pass --overwrite");
    tok_ = load_tokenizer(job_.model_dir);
    load_data();

    auto t = Clock::now();
    LlamaModel model = load_trained();
    phase("load base + adapter", t);
    ModelDirContents c;
    c.config = read_json(job_.model_dir / "config.json");
    c.config.erase("quantization_config");  // a bnb-4bit base is written dequantized
    c.config["torch_dtype"] = ops::dtype_name(written_dtype(e));
    c.copy_files_from = job_.model_dir;
    c.max_shard_bytes = job_.max_shard_bytes;
    c.overwrite = job_.overwrite;
    if (e.format == ExportFormat::kGptq) {
      const CalibrationSet calib = calibration();
      report_.calib_source = calib.source;
      report_.calib_samples = static_cast<int64_t>(calib.ids.size());
      report_.calib_tokens = calib.tokens();
      say("GPTQ: " + std::to_string(model.num_layers()) + " layers, " + std::to_string(report_.calib_samples) + " calibration sequences (" +
          std::to_string(report_.calib_tokens) + " tokens) from " + calib.source);
      warn_unservable_groups(model);
      QuantizedModel q = quantize_model(model, calib, gptq_settings(e), QuantMethod::kGptq, progress_);
      phase("calibration passes", q.calibrate_seconds);
      phase("GPTQ", q.quantize_seconds);
      report_.merges = q.merges;
      report_.linears = q.linears;
      c.tensors = unquantized_tensors(model, written_dtype(e));
      // The linears are stored packed only (their dense dequantized form stays in memory for the report).
      model.for_each_linear([&](const std::string& name, const Linear&) { c.tensors.erase(name + ".weight"); });
      for (auto& [name, tensor] : q.packed) c.tensors[name] = tensor;
      c.config["quantization_config"] = gptq_quantization_config(gptq_settings(e));
      c.extra_files["quantize_config.json"] = gptq_quantization_config(gptq_settings(e)).dump(2) + "\n";
    } else {
      t = Clock::now();
      report_.merges = merge_adapters(model);
      phase("merge", t);
      c.tensors = unquantized_tensors(model, written_dtype(e));
    }
    t = Clock::now();
    write_model_dir(out, c);
    phase("write", t);
    report_.bytes_on_disk = weight_bytes_on_disk(out);
    report_.bf16_bytes = bf16_bytes(model);
    say("wrote " + out.string());

    if (e.report) quality(e.format == ExportFormat::kGptq ? nullptr : &model, out);
    // The report goes in beside the committed model: the model is never held back by it, and a crash
    // here leaves a complete model without its report, never a half-written one.
    const nlohmann::ordered_json j = report_json(report_);
    write_file_atomic(out / "export_report.json", j.dump(2) + "\n");
    write_file_atomic(out / "export_report.md", report_markdown(report_));
    fsync_directory(out);
    return {out, j};
  }

 private:
  fs::path output_dir() const {
    const ExportSection& e = job_.settings;
    if (!e.out.empty()) return e.out;
    if (job_.run_dir.empty()) throw UsageError("--out is required when exporting --model/--adapter (no run directory to write into)");
    return job_.run_dir / (e.format == ExportFormat::kGptq ? "export-gptq" : "export-merged");
  }

  nlohmann::ordered_json settings_json() const {
    const ExportSection& e = job_.settings;
    nlohmann::ordered_json j{{"dtype", ops::dtype_name(written_dtype(e))}};
    if (e.format == ExportFormat::kGptq)
      j.update({{"bits", e.bits}, {"group_size", e.group_size}, {"sym", e.sym}, {"desc_act", e.desc_act},
                {"static_groups", e.static_groups}, {"damp", e.damp}, {"true_sequential", e.true_sequential},
                {"calib", e.calib}, {"calib_samples", e.calib_samples}, {"calib_len", e.calib_len},
                {"calib_trained_only", e.calib_trained_only}});
    if (job_.base_quant)
      j["base"] = std::string(job_.base_quant->type == ops::QuantType::kNF4 ? "nf4" : "fp4") + ", blocksize " +
                  std::to_string(job_.base_quant->blocksize) + (job_.base_quant->double_quant ? ", double quant" : "");
    return j;
  }

  // vLLM's GPTQ kernels need every quantized linear's input to be a multiple of the group size; the
  // checkpoint is still valid (transformers' and qtrain's readers take a partial last group), so warn.
  void warn_unservable_groups(LlamaModel& model) const {
    const int64_t g = job_.settings.group_size;
    if (g <= 0) return;
    std::string bad;
    model.for_each_linear([&](const std::string& name, const Linear& l) {
      if (l.shape()[1] % g != 0 && bad.empty()) bad = name + " (in " + std::to_string(l.shape()[1]) + ")";
    });
    if (!bad.empty())
      say("warning: group size " + std::to_string(g) + " does not divide the input of " + bad +
          ": vLLM's GPTQ kernels will refuse this checkpoint (choose a group size that divides every layer's input)");
  }

  void say(const std::string& s) const {
    if (progress_) progress_(s);
  }
  void phase(const std::string& name, Clock::time_point t0) { phase(name, seconds_since(t0)); }
  void phase(const std::string& name, double s) { report_.phases.emplace_back(name, s); }

  // The model the adapter was trained on: the base quantized exactly as training quantized it (same
  // codes: quantization reads the checkpoint's own dtype whatever the compute dtype), plus the adapter.
  LlamaModel load_trained() const {
    LoadOptions lo;
    lo.dtype = job_.compute;
    lo.device = job_.device;
    lo.quantize = job_.base_quant;
    LlamaModel m = LlamaModel::load(job_.model_dir, lo);
    if (!job_.adapter_dir.empty()) apply_peft_adapter(m, job_.adapter_dir, at::kFloat);
    return m;
  }

  // The run's data as training built it (same config, same cache): calibration and held-out split.
  void load_data() {
    if (!job_.run) return;
    DataConfig d = job_.run->data;
    if (d.cache_dir.empty()) d.cache_dir = job_.run_dir / "cache";
    data_ = build_dataset(d, *tok_, job_.model_dir, nullptr);
    data_config_ = d;
  }

  CalibrationSet calibration() const {
    const ExportSection& e = job_.settings;
    CalibrationOptions o;
    o.samples = e.calib_samples;
    o.length = e.calib_len;
    o.seed = job_.run ? job_.run->training.seed : 0;
    o.trained_only = e.calib_trained_only;
    if (e.calib == "recipe") {
      if (!job_.run) throw UsageError("--calib recipe needs a run directory; give a text file (--calib FILE) with --model/--adapter");
      return calibration_from_examples(*data_.train, o, "the run's training data (" + job_.run->source.string() + ")");
    }
    if (o.trained_only) throw UsageError("--calib-trained-only needs --calib recipe (a text file has no trained tokens)");
    return calibration_from_tokens(corpus_ids(*tok_, e.calib), o, e.calib);
  }

  // Every weight but the quantized linears, in `dtype` on the CPU.
  static std::map<std::string, at::Tensor> unquantized_tensors(const LlamaModel& m, at::ScalarType dtype) {
    std::map<std::string, at::Tensor> out;
    for (auto& [name, t] : m.state_tensors()) out[name] = t.to(at::kCPU, dtype);
    return out;
  }
  static uint64_t bf16_bytes(const LlamaModel& m) {
    uint64_t n = 0;
    for (auto& [name, t] : m.state_tensors()) n += static_cast<uint64_t>(t.numel());
    return 2 * n;
  }

  // The report's table: each model on the same windows, KL against the merged model.
  void quality(const LlamaModel* merged_in_memory, const fs::path& out) {
    const ExportSection& e = job_.settings;
    std::optional<TextWindows> windows;
    if (!e.eval_text.empty()) {
      windows = make_windows(corpus_ids(*tok_, e.eval_text), e.eval_len, e.eval_len, e.eval_windows);
      report_.eval_text = e.eval_text.string();
      report_.eval_windows = windows->size();
      report_.eval_len = e.eval_len;
    }
    const bool heldout = data_.eval && data_.eval->size() > 0;
    report_.heldout_examples = heldout ? data_.eval->size() : 0;
    if (!windows && !heldout) {
      say("report: no --eval-text and no held-out split: sizes and per-layer errors only");
      return;
    }
    const auto t0 = Clock::now();
    // The reference: the exact merge (float32 math, kept in the compute dtype).
    std::optional<LlamaModel> merged_storage;
    if (!merged_in_memory) {
      merged_storage.emplace(load_trained());
      merge_adapters(*merged_storage);
    }
    const LlamaModel& ref = merged_in_memory ? *merged_in_memory : *merged_storage;
    auto measure = [&](const std::string& name, const LlamaModel& m, std::optional<uint64_t> bytes) {
      ModelQuality q{name};
      if (windows) q.text = window_nll(m, *windows, 1, &ref);
      if (heldout) q.heldout_nll = evaluate(m, data_.eval, job_.run->training.micro_batch_size, data_config_, 0).loss;
      q.bytes = bytes;
      say("report: " + name + (q.text ? ": text ppl " + std::to_string(q.text->ppl) + ", KL " + std::to_string(q.text->kl) : "") +
          (q.heldout_nll ? ", held-out NLL " + std::to_string(*q.heldout_nll) : ""));
      report_.models.push_back(q);
    };
    measure("merged (" + ops::dtype_name(ref.dtype()) + ", reference)", ref, std::nullopt);
    if (job_.base_quant) {  // what the 4-bit base itself cost: the checkpoint's own weights, no adapter
      LoadOptions dense;
      dense.dtype = job_.compute;
      dense.device = job_.device;
      measure("base checkpoint (dense, no adapter)", LlamaModel::load(job_.model_dir, dense), std::nullopt);
    }
    measure(std::string(job_.base_quant ? (job_.base_quant->type == ops::QuantType::kNF4 ? "NF4" : "FP4") : "base") +
                (job_.adapter_dir.empty() ? "" : " + LoRA") + " (as trained)",
            load_trained(), std::nullopt);
    if (e.format == ExportFormat::kGptq) {
      LlamaModel rtn = load_trained();
      quantize_model(rtn, CalibrationSet{}, gptq_settings(e), QuantMethod::kRtn);
      measure(quant_label(e, "RTN"), rtn, std::nullopt);
    }
    // The export itself, read back from disk as a user would load it.
    LoadOptions lo;
    lo.dtype = job_.compute;
    lo.device = job_.device;
    measure((e.format == ExportFormat::kGptq ? quant_label(e, "GPTQ") : std::string("merged")) + " (as written, " +
                ops::dtype_name(written_dtype(e)) + ")",
            LlamaModel::load(out, lo), report_.bytes_on_disk);
    phase("report", t0);
  }

  const ExportJob& job_;
  const Progress& progress_;
  std::unique_ptr<Tokenizer> tok_;
  TokenizedDataset data_;
  DataConfig data_config_;
  ExportReport report_;
};

}  // namespace

ExportJob export_job_for_run(const fs::path& run_dir, const ExportSection& settings) {
  const fs::path config = run_dir / "config.yaml";
  if (!fs::is_regular_file(config))
    throw UsageError(run_dir.string() + " is not a qtrain run directory (no config.yaml); use --model DIR --adapter DIR for others");
  if (!fs::is_regular_file(run_dir / "adapter" / "adapter_config.json"))
    throw UsageError(run_dir.string() + " has no final adapter (adapter/adapter_config.json): the run has not finished");
  ExportJob job;
  job.run = load_recipe(config);
  job.run_dir = run_dir;
  job.model_dir = job.run->model.path;
  if (!fs::is_directory(job.model_dir))
    throw UsageError(config.string() + ": model.path '" + job.model_dir.string() +
                     "' is not a directory (a relative path is read from the current directory: run qtrain export from where the run was trained)");
  job.adapter_dir = run_dir / "adapter";
  if (job.run->quantization.enabled)
    job.base_quant = ops::QuantParams{job.run->quantization.quant_type, job.run->quantization.blocksize, job.run->quantization.double_quant};
  job.settings = settings;
  return job;
}

ExportResult run_export(const ExportJob& job, const Progress& progress) {
  validate_export_section(job.settings, "export");
  if (job.settings.format == ExportFormat::kNone) throw UsageError("export: format must be merged or gptq");
  return Exporter(job, progress).run();
}

}  // namespace qtrain
