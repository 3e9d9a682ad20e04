// `qtrain export`: from a training run (or a base model + adapter) to a model directory that serving
// engines load: the merged model (adapters folded into the dequantized NF4 base, merge.h) or a GPTQ
// 4-bit checkpoint of it (quantize_model.h, calibrated on the run's own data), written atomically, with
// a report of what the export cost in quality (export_report.h).
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include "export/quantize_model.h"
#include "ops/nf4.h"
#include "trainer/config.h"

namespace qtrain {

struct ExportJob {
  std::filesystem::path model_dir;    // the base model
  std::filesystem::path adapter_dir;  // empty: export the base alone
  // How training quantized the base (the adapter learned against deq(NF4(W)), so the merge starts from
  // exactly that); nullopt: a dense base (or one stored in 4 bits already, used as stored).
  std::optional<ops::QuantParams> base_quant;
  std::optional<Recipe> run;          // the run's resolved recipe: calibration data and held-out split
  std::filesystem::path run_dir;      // where the run's token cache lives (run only)
  ExportSection settings;
  at::Device device = at::kCPU;
  at::ScalarType compute = at::kFloat;  // what the models run in while calibrating and evaluating
  uint64_t max_shard_bytes = 5ull << 30;
  bool overwrite = false;
  ConsoleOptions console;  // progress lines of the long phases (loading, tokenizing, quantizing, the report)
};

// A job for the run in `run_dir` (its config.yaml: base model, quantization, adapter at run_dir/adapter,
// data), with `settings` (the recipe's export section or the command line). Throws UsageError naming
// what is missing.
ExportJob export_job_for_run(const std::filesystem::path& run_dir, const ExportSection& settings);

struct ExportResult {
  std::filesystem::path out;
  nlohmann::ordered_json report;  // also written as export_report.json (and .md) in `out`
};

// One line of what the export is doing ("wrote DIR", warnings, the report's numbers).
using ExportMessages = std::function<void(const std::string&)>;

// Writes the export and its report. Messages go to `messages`, progress lines to job.console.
ExportResult run_export(const ExportJob& job, const ExportMessages& messages = {});

}  // namespace qtrain
