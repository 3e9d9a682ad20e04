// The quality report every export writes (export_report.json and export_report.md in the exported
// directory): what the export costs on disk and in quality — perplexity and mean KL divergence from the
// merged model for each model along the way (NF4 + LoRA as trained, merged, RTN, GPTQ as written) —
// per-layer quantization error, the calibration set, and the wall time of each phase.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "export/merge.h"
#include "export/perplexity.h"
#include "export/quantize_model.h"

namespace qtrain {

struct ModelQuality {
  std::string name;                  // "GPTQ w4 g128 (as written)"
  std::optional<NllResult> text;     // on the eval corpus windows; kl against the merged model
  std::optional<double> heldout_nll; // mean NLL of the trained tokens of the run's held-out split
  std::optional<uint64_t> bytes;     // its weights on disk, where it is a written directory
};

struct ExportReport {
  std::string format;  // merged | gptq
  std::filesystem::path out, model_dir, adapter_dir;
  nlohmann::ordered_json settings;       // the export section as used
  std::string calib_source;
  int64_t calib_samples = 0, calib_tokens = 0;
  std::string eval_text;                 // corpus file, empty when none
  int64_t eval_windows = 0, eval_len = 0;
  int64_t heldout_examples = 0;          // 0: no held-out split
  uint64_t bytes_on_disk = 0;            // the export's weight files
  uint64_t bf16_bytes = 0;               // the same parameters in bf16
  std::vector<ModelQuality> models;
  std::vector<MergeLayerStat> merges;
  std::vector<QuantizedLinearStat> linears;
  std::vector<std::pair<std::string, double>> phases;  // name → seconds, in order
};

nlohmann::ordered_json report_json(const ExportReport& r);
std::string report_markdown(const ExportReport& r);

}  // namespace qtrain
