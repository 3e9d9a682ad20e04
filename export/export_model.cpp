#include "export/export_model.h"

#include <algorithm>
#include <chrono>
#include <fstream>
#include <iostream>

#include "data/dataset/dataset.h"
#include "data/error.h"
#include "data/io/atomic_file.h"
#include "data/io/gptq_format.h"
#include "data/io/model_writer.h"
#include "data/io/safetensors.h"
#include "data/tokenizer/tokenizer.h"
#include "data/io/awq_format.h"
#include "export/awq.h"
#include "export/awq_model.h"
#include "export/calibration.h"
#include "export/gguf_export.h"
#include "export/gguf_readback.h"
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

AwqSettings awq_settings(const ExportSection& e) {
  AwqSettings s;
  s.bits = static_cast<int>(e.bits);
  s.group_size = e.group_size;
  s.zero_point = e.zero_point;
  return s;
}

bool quantized_format(ExportFormat f) { return f == ExportFormat::kGptq || f == ExportFormat::kAwq; }

std::string format_name(ExportFormat f) {
  switch (f) {
    case ExportFormat::kNone: return "none";
    case ExportFormat::kMerged: return "merged";
    case ExportFormat::kGptq: return "gptq";
    case ExportFormat::kAwq: return "awq";
    case ExportFormat::kGguf: return "gguf";
  }
  throw std::logic_error("unknown ExportFormat");
}

// The dtype of every weight written unquantized (embeddings, norms, lm_head, biases, merged linears).
// GPTQ and AWQ kernels take fp16 activations (Marlin also bf16; the exllama and AWQ GEMM kernels fp16 only).
at::ScalarType written_dtype(const ExportSection& e) {
  if (e.dtype == "auto") return quantized_format(e.format) ? at::kHalf : at::kBFloat16;
  return *ops::parse_dtype(e.dtype);  // validated by validate_export_section
}

std::string quant_label(const ExportSection& e, const char* method) {
  if (e.format == ExportFormat::kAwq)
    return std::string(method) + " w4 g" + std::to_string(e.group_size) + (e.zero_point ? "" : " sym");
  return std::string(method) + " w" + std::to_string(e.bits) + " g" + std::to_string(e.group_size) + (e.sym ? "" : " asym") +
         (e.desc_act ? " act-order" : "");
}

uint64_t weight_bytes_on_disk(const fs::path& dir) {
  uint64_t n = 0;
  for (const auto& f : fs::directory_iterator(dir))
    if (f.path().extension() == ".safetensors" || f.path().extension() == ".gguf") n += fs::file_size(f.path());
  return n;
}

// The GGUF file's name inside the exported directory: "<model dir name>-<type>.gguf", as llama.cpp's
// tools name their outputs.
std::string gguf_file_name(const fs::path& model_dir, const std::string& type) {
  const fs::path m = fs::weakly_canonical(fs::absolute(model_dir));
  return (m.filename().empty() ? std::string("model") : m.filename().string()) + "-" + type + ".gguf";
}

class Exporter {
 public:
  Exporter(const ExportJob& job, const ExportMessages& messages) : job_(job), messages_(messages) {}

  ExportResult run() {
    const ExportSection& e = job_.settings;
    const fs::path out = output_dir();
    report_.format = format_name(e.format);
    report_.out = out;
    report_.model_dir = job_.model_dir;
    report_.adapter_dir = job_.adapter_dir;
    // Everything that can be refused is refused before any work: an export that takes an hour must not
    // fail at the last step.
    check_output(out);
    const ModelConfig mc = parse_model_config(job_.model_dir / "config.json");
    calib_len_ = within_context("calib_len", e.calib_len, mc);
    eval_len_ = within_context("eval_len", e.eval_len, mc);
    report_.settings = settings_json();
    load_data();
    if (e.report && !e.eval_text.empty()) {
      windows_ = make_windows(corpus_ids(tokenizer(), e.eval_text), eval_len_, eval_len_, e.eval_windows);
      report_.eval_text = e.eval_text.string();
      report_.eval_windows = windows_->size();
      report_.eval_len = eval_len_;
    }
    const std::optional<CalibrationSet> calib =
        quantized_format(e.format) ? std::optional<CalibrationSet>(calibration()) : std::nullopt;

    if (calib) {
      report_.calib_source = calib->source;
      report_.calib_samples = static_cast<int64_t>(calib->ids.size());
      report_.calib_tokens = calib->tokens();
    }
    std::optional<LlamaModel> merged = write_export(calib, out);  // the merged model, kept as the report's reference
    report_.bytes_on_disk = weight_bytes_on_disk(out);
    say("wrote " + out.string());

    if (e.report) quality(std::move(merged), out);
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

  // `out` must be a directory to be (or an empty one, or any with --overwrite) and must not hold any
  // input: --overwrite replaces it whole.
  void check_output(const fs::path& out) const {
    if (fs::exists(out) && !fs::is_directory(out)) throw UsageError(out.string() + " exists and is not a directory");
    if (fs::exists(out) && !fs::is_empty(out) && !job_.overwrite)
      throw UsageError(out.string() + " already exists and is not empty; choose another --out, remove it, or pass --overwrite");
    const fs::path o = fs::weakly_canonical(fs::absolute(out));
    const fs::path calib = job_.settings.calib == "recipe" ? fs::path() : fs::path(job_.settings.calib);
    for (const fs::path& input : {job_.model_dir, job_.adapter_dir, job_.run_dir, calib, job_.settings.eval_text}) {
      if (input.empty()) continue;
      const fs::path in = fs::weakly_canonical(fs::absolute(input));
      const auto [oe, ie] = std::mismatch(o.begin(), o.end(), in.begin(), in.end());
      if (oe == o.end())
        throw UsageError("--out " + out.string() + " holds the input " + input.string() + ", which writing the export would destroy");
    }
    std::error_code ec;
    fs::create_directories(o.parent_path(), ec);
    if (ec) throw UsageError("--out " + out.string() + ": cannot create " + o.parent_path().string() + ": " + ec.message());
  }

  // Calibration and evaluation windows longer than the model's context would run RoPE at positions it
  // never saw: shortened to max_position_embeddings, with a note.
  int64_t within_context(const char* key, int64_t len, const ModelConfig& mc) const {
    if (len <= mc.max_position_embeddings) return len;
    say(std::string(key) + " " + std::to_string(len) + " is past the model's max_position_embeddings (" +
        (job_.model_dir / "config.json").string() + "): using " + std::to_string(mc.max_position_embeddings));
    return mc.max_position_embeddings;
  }

  const Tokenizer& tokenizer() {
    if (!tok_) tok_ = load_tokenizer(job_.model_dir);
    return *tok_;
  }

  nlohmann::ordered_json settings_json() const {
    const ExportSection& e = job_.settings;
    nlohmann::ordered_json j{{"dtype", ops::dtype_name(written_dtype(e))}};
    if (e.format == ExportFormat::kGptq)
      j.update({{"bits", e.bits}, {"group_size", e.group_size}, {"sym", e.sym}, {"desc_act", e.desc_act},
                {"static_groups", e.static_groups}, {"damp", e.damp}, {"true_sequential", e.true_sequential},
                {"calib", e.calib}, {"calib_samples", e.calib_samples}, {"calib_len", calib_len_},
                {"calib_trained_only", e.calib_trained_only}});
    if (job_.base_quant)
      j["base"] = std::string(job_.base_quant->type == ops::QuantType::kNF4 ? "nf4" : "fp4") + ", blocksize " +
                  std::to_string(job_.base_quant->blocksize) + (job_.base_quant->double_quant ? ", double quant" : "");
    return j;
  }

  // vLLM's GPTQ and AWQ kernels need every quantized linear's input to be a multiple of the group size; the
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
          ": vLLM's kernels will refuse this checkpoint (choose a group size that divides every layer's input)");
  }

  void say(const std::string& s) const {
    if (messages_) messages_(s);
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
    lo.console = job_.console;
    LlamaModel m = LlamaModel::load(job_.model_dir, lo);
    if (!job_.adapter_dir.empty()) apply_peft_adapter(m, job_.adapter_dir, at::kFloat);
    return m;
  }

  // The run's data as training built it (same config, same cache): calibration and held-out split.
  void load_data() {
    if (!job_.run) return;
    DataConfig d = job_.run->data;
    if (d.cache_dir.empty()) d.cache_dir = job_.run_dir / "cache";
    data_ = build_dataset(d, tokenizer(), job_.model_dir, nullptr, job_.console);
    data_config_ = d;
  }

  CalibrationSet calibration() {
    const ExportSection& e = job_.settings;
    CalibrationOptions o;
    o.samples = e.calib_samples;
    o.length = calib_len_;
    o.seed = job_.run ? job_.run->training.seed : 0;
    o.trained_only = e.calib_trained_only;
    if (e.calib == "recipe") {
      if (!job_.run) throw UsageError("--calib recipe needs a run directory; give a text file (--calib FILE) with --model/--adapter");
      return calibration_from_examples(*data_.train, o, "the run's training data (" + job_.run->source.string() + ")");
    }
    if (o.trained_only) throw UsageError("--calib-trained-only needs --calib recipe (a text file has no trained tokens)");
    return calibration_from_tokens(corpus_ids(tokenizer(), e.calib), o, e.calib);
  }

  // Loads, merges or quantizes, and writes the export into `out`. Returns the merged model when the
  // format keeps one in memory anyway (merged, GGUF) and the report will need it as its reference; the
  // quantized model and the written tensors are freed on return, before the report loads its models.
  std::optional<LlamaModel> write_export(const std::optional<CalibrationSet>& calib, const fs::path& out) {
    const ExportSection& e = job_.settings;
    auto t = Clock::now();
    LlamaModel model = load_trained();
    phase("load base + adapter", t);
    report_.bf16_bytes = bf16_bytes(model);
    if (e.format == ExportFormat::kGguf) {
      write_gguf_dir(model, out);
      return e.report ? std::optional<LlamaModel>(std::move(model)) : std::nullopt;
    }
    ModelDirContents c;
    c.config = read_model_config_json(job_.model_dir);
    c.config.erase("quantization_config");  // a bnb-4bit base is written dequantized
    set_config_dtype(c.config, ops::dtype_name(written_dtype(e)));
    c.copy_files_from = job_.model_dir;
    c.max_shard_bytes = job_.max_shard_bytes;
    c.overwrite = job_.overwrite;
    c.tensors = unquantized_tensors(model, written_dtype(e));
    if (e.format == ExportFormat::kGptq) {
      say("GPTQ: " + std::to_string(model.num_layers()) + " layers, " + std::to_string(report_.calib_samples) +
          " calibration sequences (" + std::to_string(report_.calib_tokens) + " tokens) from " + calib->source);
      warn_unservable_groups(model);
      QuantizedModel q = quantize_model(model, *calib, gptq_settings(e), QuantMethod::kGptq, job_.console);
      phase("calibration passes", q.calibrate_seconds);
      phase("GPTQ", q.quantize_seconds);
      report_.merges = q.merges;
      report_.linears = q.linears;
      for (auto& [name, tensor] : q.packed) c.tensors[name] = tensor;
      c.config["quantization_config"] = gptq_quantization_config(gptq_settings(e));
      c.extra_files["quantize_config.json"] = gptq_quantization_config(gptq_settings(e)).dump(2) + "\n";
    } else if (e.format == ExportFormat::kAwq) {
      say("AWQ: " + std::to_string(model.num_layers()) + " layers, " + std::to_string(report_.calib_samples) +
          " calibration sequences (" + std::to_string(report_.calib_tokens) + " tokens) from " + calib->source);
      warn_unservable_groups(model);
      t = Clock::now();
      QuantizedModel q = awq_quantize_model(model, *calib, awq_settings(e), job_.console);
      phase("AWQ (search, clip, quantize)", t);
      report_.merges = q.merges;
      report_.linears = q.linears;
      // AWQ folded its scales into the RMSNorm weights: those come from the model, not the checkpoint.
      for (auto& [name, tensor] : unquantized_tensors(model, written_dtype(e), /*from_checkpoint=*/false)) c.tensors[name] = tensor;
      for (auto& [name, tensor] : q.packed) c.tensors[name] = tensor;
      c.config["quantization_config"] = awq_quantization_config(awq_settings(e));
    } else {
      t = Clock::now();
      // Each merged weight is rounded once, from float32 to the written dtype.
      report_.merges = merge_adapters(model, [&](const std::string& name, const at::Tensor& w32) {
        c.tensors[name + ".weight"] = w32.to(at::kCPU, written_dtype(e));
      });
      phase("merge", t);
    }
    t = Clock::now();
    write_model_dir(out, c);
    phase("write", t);
    return !calib && e.report ? std::optional<LlamaModel>(std::move(model)) : std::nullopt;
  }

  // The GGUF export: the merged model as one llama.cpp file, in a directory of its own beside the report
  // (written as a whole: AtomicDirectory).
  void write_gguf_dir(LlamaModel& model, const fs::path& out) {
    auto t = Clock::now();
    report_.merges = merge_adapters(model);
    phase("merge", t);
    t = Clock::now();
    AtomicDirectory dir(out);
    gguf_file_ = gguf_file_name(job_.model_dir, job_.settings.gguf_type);
    const GgufResult g = write_gguf(dir.path() / gguf_file_, model, job_.model_dir, parse_gguf_type(job_.settings.gguf_type), job_.console);
    dir.commit();
    phase("write GGUF", t);
    std::map<std::string, int> counts;
    for (const auto& [name, type] : g.tensor_types) counts[type]++;
    std::string types;
    for (const auto& [type, n] : counts) types += (types.empty() ? "" : ", ") + std::to_string(n) + " " + type;
    say("GGUF tensor types: " + types);
  }

  // Every weight but the linears' (embeddings, norms, lm_head, biases) in `dtype` on the CPU, cast once
  // from the checkpoint's own tensors (not from the compute-dtype copies the model holds), or from the
  // model where the export changed them (AWQ's folded norms).
  std::map<std::string, at::Tensor> unquantized_tensors(const LlamaModel& m, at::ScalarType dtype,
                                                        bool from_checkpoint = true) const {
    const auto ckpt = safetensors::Checkpoint::open(job_.model_dir);
    std::vector<std::string> linears;
    m.for_each_linear([&](const std::string& name, const Linear&) { linears.push_back(name + ".weight"); });
    std::map<std::string, at::Tensor> out;
    for (auto& [name, t] : m.state_tensors()) {
      // A linear's weight, dense or its 4-bit pieces ("….weight.absmax", …): written by the caller.
      if (std::any_of(linears.begin(), linears.end(), [&](const std::string& w) { return name.rfind(w, 0) == 0; })) continue;
      out[name] = (from_checkpoint && ckpt.contains(name) ? ckpt.tensor(name) : t).to(at::kCPU, dtype);
    }
    return out;
  }
  // The model's parameters in bf16: what the export's size is compared with. A 4-bit linear counts its
  // out·in parameters, not its packed bytes and quantization state.
  static uint64_t bf16_bytes(const LlamaModel& m) {
    std::vector<std::string> linears;
    uint64_t n = 0;
    m.for_each_linear([&](const std::string& name, const Linear& l) {
      linears.push_back(name + ".weight");
      n += static_cast<uint64_t>(l.shape()[0] * l.shape()[1]);
    });
    for (auto& [name, t] : m.state_tensors())
      if (std::none_of(linears.begin(), linears.end(), [&](const std::string& w) { return name.rfind(w, 0) == 0; }))
        n += static_cast<uint64_t>(t.numel());
    return 2 * n;
  }

  // The report's table: each model on the same windows, KL against the merged model.
  void quality(std::optional<LlamaModel> merged, const fs::path& out) {
    const ExportSection& e = job_.settings;
    const std::optional<TextWindows>& windows = windows_;
    const bool heldout = data_.eval && data_.eval->size() > 0;
    report_.heldout_examples = heldout ? data_.eval->size() : 0;
    if (!windows && !heldout) {
      say("report: no --eval-text and no held-out split: sizes and per-layer errors only");
      return;
    }
    const auto t0 = Clock::now();
    // The reference: the exact merge (float32 math, kept in the compute dtype).
    if (!merged) {
      merged.emplace(load_trained());
      merge_adapters(*merged);
    }
    const LlamaModel& ref = *merged;
    auto measure = [&](const std::string& name, const LlamaModel& m, std::optional<uint64_t> bytes) {
      ModelQuality q;
      q.name = name;
      if (windows) {
        ProgressLine line(job_.console, "report: evaluating " + name, windows->size(), "windows");
        q.text = window_nll(m, *windows, 1, &ref, show_window_progress(line));
        line.finish("", /*transient=*/true);  // the numbers follow
      }
      if (heldout)
        q.heldout_nll = evaluate(m, data_.eval, job_.run->training.micro_batch_size, data_config_, 0, {}, job_.console).loss;
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
      dense.console = job_.console;
      measure("base checkpoint (dense, no adapter)", LlamaModel::load(job_.model_dir, dense), std::nullopt);
    }
    measure(std::string(job_.base_quant ? (job_.base_quant->type == ops::QuantType::kNF4 ? "NF4" : "FP4") : "base") +
                (job_.adapter_dir.empty() ? "" : " + LoRA") + " (as trained)",
            load_trained(), std::nullopt);
    if (e.format == ExportFormat::kGptq) {
      LlamaModel rtn = load_trained();
      quantize_model(rtn, CalibrationSet{}, gptq_settings(e), QuantMethod::kRtn, job_.console);
      measure(quant_label(e, "RTN"), rtn, std::nullopt);
    } else if (e.format == ExportFormat::kAwq) {  // round-to-nearest on AWQ's grid, no scales, no clip
      LlamaModel rtn = load_trained();
      merge_adapters(rtn, [&](const std::string&, const at::Tensor&) {});
      rtn.for_each_linear([&](const std::string&, Linear& l) {
        l.weight = awq_fake_quantize(l.weight.to(at::kFloat), awq_settings(e)).to(rtn.dtype());
      });
      measure(quant_label(e, "RTN"), rtn, std::nullopt);
    }
    // The export itself, read back from disk as a user would load it.
    LoadOptions lo;
    lo.dtype = job_.compute;
    lo.device = job_.device;
    lo.console = job_.console;
    if (e.format == ExportFormat::kGguf) {
      measure("GGUF " + e.gguf_type + " (as written, read back as llama.cpp dequantizes it)",
              load_gguf_model(out / gguf_file_, ref.config(), lo), report_.bytes_on_disk);
    } else {
      const std::string label = e.format == ExportFormat::kGptq  ? quant_label(e, "GPTQ")
                                : e.format == ExportFormat::kAwq ? quant_label(e, "AWQ")
                                                                 : std::string("merged");
      measure(label + " (as written, " + ops::dtype_name(written_dtype(e)) + ")", LlamaModel::load(out, lo), report_.bytes_on_disk);
    }
    phase("report", t0);
  }

  const ExportJob& job_;
  const ExportMessages& messages_;
  std::unique_ptr<Tokenizer> tok_;  // loaded when first needed: a model directory without one still exports
  int64_t calib_len_ = 0, eval_len_ = 0;  // the settings', within the model's context
  std::optional<TextWindows> windows_;   // the report's text windows, made before any work
  std::string gguf_file_;                // the GGUF export's file name in `out`
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

ExportResult run_export(const ExportJob& job, const ExportMessages& messages) {
  validate_export_section(job.settings, "export");
  if (job.settings.format == ExportFormat::kNone) throw UsageError("export: format must be merged or gptq");
  return Exporter(job, messages).run();
}

}  // namespace qtrain
