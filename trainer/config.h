// Recipes: YAML parsed once into typed structs (design.md §11). Every default lives in these structs;
// strings become enums at the boundary; unknown keys, wrong types and impossible values are all
// reported together, each with the file, the key and (for unknown keys) the nearest valid key.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "data/dataset/data_config.h"
#include "ops/nf4.h"

namespace qtrain {

enum class DtypeChoice { kAuto, kFloat32, kBFloat16 };  // auto: bf16 on CUDA, fp32 on CPU
enum class DeviceChoice { kAuto, kCpu, kCuda };         // auto: CUDA when available
enum class Schedule { kConstant, kLinear, kCosine };
enum class NanPolicy { kStop, kSkip };

struct ModelSection {
  // A Hugging Face model directory, or a Hub id (org/name[@revision], hf://org/name): see docs/HUB.md and
  // resolve_hub_ids (trainer/recipe_hub.h), which turns an id into its snapshot directory before use.
  std::filesystem::path path;
  std::vector<std::string> target_modules = {"all-linear"};  // or a subset of q_proj … down_proj
  // Quickstart only: when `path` does not exist, create a small random Llama + tokenizer there.
  bool create_if_missing = false;
};

struct QuantizationSection {
  bool enabled = true;  // false: the base stays dense (in the compute dtype)
  ops::QuantType quant_type = ops::QuantType::kNF4;
  bool double_quant = true;
  int64_t blocksize = 64;
};

struct LoraSection {
  int64_t r = 16;
  double alpha = 32;
  double dropout = 0.05;
  bool rslora = false;
  std::optional<uint64_t> init_seed;  // default: training.seed
  // Adapter weights (and their gradients): auto = the compute dtype, so bf16 on CUDA as the QLoRA paper
  // trained them and fp32 on the CPU; float32 keeps fp32 master weights under a bf16 compute dtype.
  DtypeChoice dtype = DtypeChoice::kAuto;
};

struct TrainingSection {
  int64_t micro_batch_size = 1;
  int64_t gradient_accumulation = 16;
  int64_t max_steps = 0;  // optimizer steps; 0 = run `epochs` epochs
  double epochs = 1;
  double learning_rate = 2e-4;
  Schedule schedule = Schedule::kConstant;
  int64_t warmup_steps = 0;
  double max_grad_norm = 0.3;  // 0 = no clipping
  double weight_decay = 0.0;
  uint64_t seed = 42;
  bool recompute = true;
  DtypeChoice compute_dtype = DtypeChoice::kAuto;
  DeviceChoice device = DeviceChoice::kAuto;
  NanPolicy on_nan = NanPolicy::kStop;
  // Recompute checkpoints (one hidden state per layer) kept in host memory between forward and backward.
  bool offload_checkpoints = false;
  // CUDA: fp32 matmuls (cuBLAS, cuDNN) may use TF32 tensor cores while training (10 mantissa bits in the
  // products, fp32 accumulation); set back when training ends, so export's GPTQ/AWQ never see it.
  bool tf32 = true;
};

struct OptimizerSection {
  // adamw (with bits / paged below), or the ecosystem's names, which set bits and paged: adamw_32bit,
  // adamw_8bit, paged_adamw_32bit, paged_adamw_8bit. load_recipe resolves them to "adamw" + bits + paged.
  std::string name = "adamw";
  int64_t bits = 32;           // 32 or 8 (blockwise, bitsandbytes semantics: ops/adamw_fused.h)
  bool paged = false;          // state pages in host memory, a device pool of device_budget_mb (trainer/paged_state.h)
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  int64_t min_8bit_size = 4096;  // bnb's: parameters with fewer elements keep 32-bit state in 8-bit mode
  double device_budget_mb = 0;   // paged: device pool size; 0 = what the memory planner leaves free (all, on CPU)
  int64_t page_kb = 2048;        // paged: page size
};

struct ScheduleSection {
  int64_t log_every = 10;   // optimizer steps between log lines
  int64_t eval_every = 0;   // 0 = at the end only
  int64_t save_every = 0;   // 0 = at the end only
  int64_t keep_last = 3;    // checkpoints kept
  int64_t eval_batches = 0;  // 0 = the whole held-out split
};

enum class ExportFormat { kNone, kMerged, kGptq, kAwq, kGguf };

// What `qtrain export` writes, and the recipe's `export:` section that runs it after training: one
// struct for both, so a recipe key and a command-line option always mean the same thing.
struct ExportSection {
  ExportFormat format = ExportFormat::kNone;  // none: training ends with the adapter
  std::filesystem::path out;                  // default: <run dir>/export-<format>
  std::string dtype = "auto";  // unquantized weights: auto = bfloat16 (merged), float16 (gptq, awq: as their kernels expect)
  // GPTQ (formats.md §5): bits, grid, act-order, damping; defaults are what vLLM's Marlin kernels run.
  int64_t bits = 4;
  int64_t group_size = 128;  // -1: one group per row
  bool sym = true;
  bool desc_act = false;
  bool static_groups = false;
  double damp = 0.01;
  bool true_sequential = true;
  bool zero_point = true;             // AWQ: asymmetric grid with a zero per group (AutoAWQ's default)
  std::string gguf_type = "q4_k_m";   // GGUF: f16 | q8_0 | q4_k_m
  // Calibration: "recipe" = the run's own training data as it was trained on, or a text file.
  std::string calib = "recipe";
  int64_t calib_samples = 128;
  int64_t calib_len = 2048;
  bool calib_trained_only = false;  // Hessians from the positions that predict trained tokens only
  // The quality report: perplexity and KL on a text corpus (e.g. WikiText-2's test split) and on the
  // run's held-out data, for the merged, NF4 + LoRA, RTN and GPTQ models.
  bool report = true;
  std::filesystem::path eval_text;
  int64_t eval_len = 2048;     // tokens per window
  int64_t eval_windows = 0;    // 0 = every window of the corpus
};

// Throws UsageError listing every impossible value; `where` prefixes each ("recipe.yaml: export" or
// "qtrain export").
void validate_export_section(const ExportSection& e, const std::string& where);

// What a run writes for people to look at, besides metrics.jsonl (which is always written).
struct LoggingSection {
  bool tensorboard = true;  // events.out.tfevents.* in output_dir (trainer/tensorboard.h)
  bool report = true;       // report.html in output_dir when the run ends (trainer/run_report.h)
  std::string console = "text";  // text | json: every console line a JSON object (ConsoleOptions)
  bool quiet = false;            // no progress or evaluation lines on the console
};

enum class DistBackend { kAuto, kGloo, kNccl };  // auto: NCCL on CUDA, Gloo on CPU

// Several processes, one per GPU (torchrun or Slurm's srun: trainer/distributed_env.h), training one
// adapter data-parallel (trainer/distributed.h). Ignored by a single process. Left out of the recipe
// hash: a run may resume under another launch.
struct DistributedSection {
  DistBackend backend = DistBackend::kAuto;
  double timeout = 600;     // seconds: bounds the rendezvous, every collective and noticing a lost rank
  int64_t world_size = 0;   // 0: as many ranks as launched; N: refuse any other count (1 without a launcher too)
  double bucket_mb = 25;    // adapter gradients are all-reduced in buckets of this size (DDP's default)
};

// model.path and the data file entries as the recipe wrote them, kept by resolve_hub_ids when it
// replaced Hub ids in them with local snapshot paths: recipe_hash hashes these, so a run resumes on any
// machine that resolves the same ids, whatever its cache directory.
struct WrittenPaths {
  std::filesystem::path model_path;
  std::vector<DataFile> files, eval_files;
};

struct Recipe {
  std::filesystem::path source;  // the YAML file
  std::optional<WrittenPaths> as_written;  // set by resolve_hub_ids only
  ModelSection model;
  QuantizationSection quantization;
  LoraSection lora;
  DataConfig data;
  TrainingSection training;
  OptimizerSection optimizer;
  ScheduleSection schedule;
  ExportSection export_;  // `export:` (a keyword in C++, hence the underscore)
  LoggingSection logging;
  DistributedSection distributed;
  std::filesystem::path output_dir = "runs/qtrain";
};

// Loads `path`, applies `overrides` ("training.learning_rate=1e-4", as given to --set), validates.
// Relative paths in the recipe resolve against the current directory (recipes document the command
// they are run with). Throws UsageError listing every problem found.
Recipe load_recipe(const std::filesystem::path& path, const std::vector<std::string>& overrides = {});

// The resolved recipe as YAML (every key, defaults included): --print-config and the run directory. After
// resolve_hub_ids, a path that was a Hub id carries the id in a comment.
std::string recipe_to_yaml(const Recipe& r);

// Stable hash of the resolved recipe (resume refuses a checkpoint made with another config). Intervals,
// output_dir, data.cache_dir, max_steps, epochs, training.device and the export section are left out: a resumed run may
// change them. Hub ids are hashed as written (Recipe::as_written), not as the local paths they resolved to.
std::string recipe_hash(const Recipe& r);

// The dtypes a run trains in, `auto` resolved for its device (cuda: the training device is a GPU):
// compute auto = bfloat16 on CUDA, float32 on the CPU; lora auto = the compute dtype. Never kAuto.
DtypeChoice resolved_compute_dtype(const TrainingSection& t, bool cuda);
DtypeChoice resolved_lora_dtype(const Recipe& r, bool cuda);

}  // namespace qtrain
