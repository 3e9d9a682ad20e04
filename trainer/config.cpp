#include "trainer/config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cmath>
#include <charconv>
#include <functional>
#include <sstream>
#include <tuple>

#include "trainer/model/linear_modules.h"
#include "data/error.h"

namespace qtrain {
namespace {

// ---- enum ↔ string tables: the only place these spellings live ----
template <class E>
using Table = std::vector<std::pair<E, std::string>>;

const Table<DtypeChoice> kDtypes = {{DtypeChoice::kAuto, "auto"}, {DtypeChoice::kFloat32, "float32"}, {DtypeChoice::kBFloat16, "bfloat16"}};
const Table<DeviceChoice> kDevices = {{DeviceChoice::kAuto, "auto"}, {DeviceChoice::kCpu, "cpu"}, {DeviceChoice::kCuda, "cuda"}};
const Table<Schedule> kSchedules = {{Schedule::kConstant, "constant"}, {Schedule::kLinear, "linear"}, {Schedule::kCosine, "cosine"}};
const Table<NanPolicy> kNanPolicies = {{NanPolicy::kStop, "stop"}, {NanPolicy::kSkip, "skip"}};
const Table<ExportFormat> kExportFormats = {{ExportFormat::kNone, "none"},
                                            {ExportFormat::kMerged, "merged"},
                                            {ExportFormat::kGptq, "gptq"},
                                            {ExportFormat::kAwq, "awq"},
                                            {ExportFormat::kGguf, "gguf"}};
const Table<DistBackend> kDistBackends = {{DistBackend::kAuto, "auto"}, {DistBackend::kGloo, "gloo"}, {DistBackend::kNccl, "nccl"}};
const Table<ops::QuantType> kQuantTypes = {{ops::QuantType::kNF4, "nf4"}, {ops::QuantType::kFP4, "fp4"}};

template <class E>
std::string enum_name(const Table<E>& t, E v) {
  for (const auto& [e, s] : t)
    if (e == v) return s;
  throw std::logic_error("recipe: enum value " + std::to_string(static_cast<int>(v)) + " missing from its name table");
}

// Collects every problem so the user sees all of them in one run.
struct Problems {
  std::string file;
  std::vector<std::string> list;
  void add(const std::string& key, const std::string& msg) { list.push_back(file + ": " + key + ": " + msg); }
};

// Parses one scalar of type T from a YAML node; returns false (and records why) on a bad value.
template <class T>
bool parse_value(const YAML::Node& n, T* out, std::string* why);

template <>
bool parse_value(const YAML::Node& n, std::string* out, std::string* why) {
  if (!n.IsScalar()) return *why = "expected a string", false;
  *out = n.Scalar();
  return true;
}
template <>
bool parse_value(const YAML::Node& n, std::filesystem::path* out, std::string* why) {
  std::string s;
  if (!parse_value(n, &s, why)) return false;
  *out = s;
  return true;
}
template <>
bool parse_value(const YAML::Node& n, bool* out, std::string* why) {
  if (!n.IsScalar() || !YAML::convert<bool>::decode(n, *out)) return *why = "expected true or false, found '" + (n.IsScalar() ? n.Scalar() : std::string("a collection")) + "'", false;
  return true;
}
template <>
bool parse_value(const YAML::Node& n, double* out, std::string* why) {
  if (!n.IsScalar()) return *why = "expected a number", false;
  try {
    std::size_t used = 0;
    *out = std::stod(n.Scalar(), &used);
    if (used != n.Scalar().size()) throw std::invalid_argument("trailing");
  } catch (const std::exception&) {
    return *why = "expected a number, found '" + n.Scalar() + "'", false;
  }
  // stod reads "nan" and "inf", which would pass every range check below (NaN compares false).
  if (!std::isfinite(*out)) return *why = "expected a finite number, found '" + n.Scalar() + "'", false;
  return true;
}
template <>
bool parse_value(const YAML::Node& n, int64_t* out, std::string* why) {
  if (!n.IsScalar()) return *why = "expected an integer", false;
  try {
    std::size_t used = 0;
    *out = std::stoll(n.Scalar(), &used);
    if (used != n.Scalar().size()) throw std::invalid_argument("trailing");
  } catch (const std::exception&) {
    return *why = "expected an integer, found '" + n.Scalar() + "'", false;
  }
  return true;
}
template <>
bool parse_value(const YAML::Node& n, uint64_t* out, std::string* why) {
  int64_t v = 0;
  if (!parse_value(n, &v, why)) return false;
  if (v < 0) return *why = "expected a non-negative integer, found " + n.Scalar(), false;
  *out = static_cast<uint64_t>(v);
  return true;
}
template <>
bool parse_value(const YAML::Node& n, std::vector<std::string>* out, std::string* why) {
  out->clear();
  if (n.IsScalar()) return out->push_back(n.Scalar()), true;
  if (!n.IsSequence()) return *why = "expected a list of strings", false;
  for (const auto& e : n) {
    if (!e.IsScalar()) return *why = "expected a list of strings", false;
    out->push_back(e.Scalar());
  }
  return true;
}

template <class E>
bool parse_enum(const YAML::Node& n, const Table<E>& t, E* out, std::string* why) {
  std::string s;
  if (!parse_value(n, &s, why)) return false;
  for (const auto& [e, name] : t)
    if (name == s) return *out = e, true;
  std::string allowed;
  for (const auto& [e, name] : t) allowed += (allowed.empty() ? "" : ", ") + name;
  return *why = "'" + s + "' is not one of: " + allowed, false;
}

std::string yaml_scalar(const std::string& s) {
  YAML::Emitter e;
  e << YAML::DoubleQuoted << s;
  return e.c_str();
}
// The shortest decimal that parses back to the same double (0.05, not 0.050000000000000003).
std::string yaml_number(double v) {
  char buf[32];
  const auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
  if (ec != std::errc()) throw std::logic_error("recipe: cannot print the number " + std::to_string(v));
  return std::string(buf, end);
}

// One recipe key: how to parse it into the Recipe and how to print it back.
struct Field {
  std::string key;  // "training.learning_rate"
  std::function<bool(const YAML::Node&, Recipe&, std::string*)> set;
  std::function<std::string(const Recipe&)> get;
};

template <class T>
Field field(std::string key, std::function<T&(Recipe&)> ref, std::function<std::string(const T&)> show) {
  return {key,
          [ref](const YAML::Node& n, Recipe& r, std::string* why) { return parse_value(n, &ref(r), why); },
          [ref, show](const Recipe& r) { return show(ref(const_cast<Recipe&>(r))); }};
}
template <class E>
Field enum_field(std::string key, const Table<E>& t, std::function<E&(Recipe&)> ref) {
  return {key, [ref, &t](const YAML::Node& n, Recipe& r, std::string* why) { return parse_enum(n, t, &ref(r), why); },
          [ref, &t](const Recipe& r) { return enum_name(t, ref(const_cast<Recipe&>(r))); }};
}

const auto show_str = [](const std::string& s) { return yaml_scalar(s); };
const auto show_path = [](const std::filesystem::path& p) { return yaml_scalar(p.string()); };
const auto show_bool = [](const bool& b) { return std::string(b ? "true" : "false"); };
const auto show_i64 = [](const int64_t& v) { return std::to_string(v); };
const auto show_u64 = [](const uint64_t& v) { return std::to_string(v); };
const auto show_f64 = [](const double& v) { return yaml_number(v); };
const auto show_list = [](const std::vector<std::string>& v) {
  std::string s = "[";
  for (std::size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + yaml_scalar(v[i]);
  return s + "]";
};

#define QT_F(T, KEY, EXPR, SHOW) field<T>(KEY, [](Recipe& r) -> T& { return r.EXPR; }, SHOW)
#define QT_E(KEY, TABLE, EXPR) enum_field(KEY, TABLE, std::function<std::remove_reference_t<decltype(Recipe().EXPR)>&(Recipe&)>([](Recipe& r) -> auto& { return r.EXPR; }))

std::vector<Field> data_fields();
void validate_data(const DataConfig& d, Problems& p);

std::vector<Field> all_fields() {
  std::vector<Field> f = {
      QT_F(std::filesystem::path, "model.path", model.path, show_path),
      QT_F(std::vector<std::string>, "model.target_modules", model.target_modules, show_list),
      QT_F(bool, "model.create_if_missing", model.create_if_missing, show_bool),
      QT_F(bool, "quantization.enabled", quantization.enabled, show_bool),
      QT_E("quantization.quant_type", kQuantTypes, quantization.quant_type),
      QT_F(bool, "quantization.double_quant", quantization.double_quant, show_bool),
      QT_F(int64_t, "quantization.blocksize", quantization.blocksize, show_i64),
      QT_F(int64_t, "lora.r", lora.r, show_i64),
      QT_F(double, "lora.alpha", lora.alpha, show_f64),
      QT_F(double, "lora.dropout", lora.dropout, show_f64),
      QT_F(bool, "lora.rslora", lora.rslora, show_bool),
      {"lora.init_seed",
       [](const YAML::Node& n, Recipe& r, std::string* why) {
         uint64_t v = 0;
         if (n.IsNull() || (n.IsScalar() && n.Scalar() == "null")) return r.lora.init_seed.reset(), true;
         if (!parse_value(n, &v, why)) return false;
         r.lora.init_seed = v;
         return true;
       },
       [](const Recipe& r) { return r.lora.init_seed ? std::to_string(*r.lora.init_seed) : std::string("null"); }},
      QT_E("lora.dtype", kDtypes, lora.dtype),
      QT_F(int64_t, "training.micro_batch_size", training.micro_batch_size, show_i64),
      QT_F(int64_t, "training.gradient_accumulation", training.gradient_accumulation, show_i64),
      QT_F(int64_t, "training.max_steps", training.max_steps, show_i64),
      QT_F(double, "training.epochs", training.epochs, show_f64),
      QT_F(double, "training.learning_rate", training.learning_rate, show_f64),
      QT_E("training.schedule", kSchedules, training.schedule),
      QT_F(int64_t, "training.warmup_steps", training.warmup_steps, show_i64),
      QT_F(double, "training.max_grad_norm", training.max_grad_norm, show_f64),
      QT_F(double, "training.weight_decay", training.weight_decay, show_f64),
      QT_F(uint64_t, "training.seed", training.seed, show_u64),
      QT_F(bool, "training.recompute", training.recompute, show_bool),
      QT_E("training.compute_dtype", kDtypes, training.compute_dtype),
      QT_E("training.device", kDevices, training.device),
      QT_E("training.on_nan", kNanPolicies, training.on_nan),
      QT_F(bool, "training.offload_checkpoints", training.offload_checkpoints, show_bool),
      QT_F(bool, "training.tf32", training.tf32, show_bool),
      QT_F(std::string, "optimizer.name", optimizer.name, show_str),
      QT_F(int64_t, "optimizer.bits", optimizer.bits, show_i64),
      QT_F(bool, "optimizer.paged", optimizer.paged, show_bool),
      QT_F(double, "optimizer.beta1", optimizer.beta1, show_f64),
      QT_F(double, "optimizer.beta2", optimizer.beta2, show_f64),
      QT_F(double, "optimizer.eps", optimizer.eps, show_f64),
      QT_F(int64_t, "optimizer.min_8bit_size", optimizer.min_8bit_size, show_i64),
      QT_F(double, "optimizer.device_budget_mb", optimizer.device_budget_mb, show_f64),
      QT_F(int64_t, "optimizer.page_kb", optimizer.page_kb, show_i64),
      QT_F(int64_t, "schedule.log_every", schedule.log_every, show_i64),
      QT_F(int64_t, "schedule.eval_every", schedule.eval_every, show_i64),
      QT_F(int64_t, "schedule.save_every", schedule.save_every, show_i64),
      QT_F(int64_t, "schedule.keep_last", schedule.keep_last, show_i64),
      QT_F(int64_t, "schedule.eval_batches", schedule.eval_batches, show_i64),
      QT_E("export.format", kExportFormats, export_.format),
      QT_F(std::filesystem::path, "export.out", export_.out, show_path),
      QT_F(std::string, "export.dtype", export_.dtype, show_str),
      QT_F(int64_t, "export.bits", export_.bits, show_i64),
      QT_F(int64_t, "export.group_size", export_.group_size, show_i64),
      QT_F(bool, "export.sym", export_.sym, show_bool),
      QT_F(bool, "export.desc_act", export_.desc_act, show_bool),
      QT_F(bool, "export.static_groups", export_.static_groups, show_bool),
      QT_F(double, "export.damp", export_.damp, show_f64),
      QT_F(bool, "export.true_sequential", export_.true_sequential, show_bool),
      QT_F(bool, "export.zero_point", export_.zero_point, show_bool),
      QT_F(std::string, "export.gguf_type", export_.gguf_type, show_str),
      QT_F(std::string, "export.calib", export_.calib, show_str),
      QT_F(int64_t, "export.calib_samples", export_.calib_samples, show_i64),
      QT_F(int64_t, "export.calib_len", export_.calib_len, show_i64),
      QT_F(bool, "export.calib_trained_only", export_.calib_trained_only, show_bool),
      QT_F(bool, "export.report", export_.report, show_bool),
      QT_F(std::filesystem::path, "export.eval_text", export_.eval_text, show_path),
      QT_F(int64_t, "export.eval_len", export_.eval_len, show_i64),
      QT_F(int64_t, "export.eval_windows", export_.eval_windows, show_i64),
      QT_F(bool, "logging.tensorboard", logging.tensorboard, show_bool),
      QT_F(bool, "logging.report", logging.report, show_bool),
      QT_F(std::string, "logging.console", logging.console, show_str),
      QT_F(bool, "logging.quiet", logging.quiet, show_bool),
      QT_E("distributed.backend", kDistBackends, distributed.backend),
      QT_F(double, "distributed.timeout", distributed.timeout, show_f64),
      QT_F(int64_t, "distributed.world_size", distributed.world_size, show_i64),
      QT_F(double, "distributed.bucket_mb", distributed.bucket_mb, show_f64),
      QT_F(std::filesystem::path, "output_dir", output_dir, show_path),
  };
  for (auto& df : data_fields()) f.push_back(std::move(df));
  return f;
}

std::size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t prev = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      const std::size_t cur = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, prev + (a[i - 1] != b[j - 1])});
      prev = cur;
    }
  }
  return row[b.size()];
}

std::string nearest_key(const std::string& key, const std::vector<Field>& fields) {
  std::string best;
  std::size_t best_d = SIZE_MAX;
  for (const auto& f : fields) {
    // Compare within the same section first: a typo rarely changes the section.
    const std::size_t d = edit_distance(key, f.key);
    if (d < best_d) best_d = d, best = f.key;
  }
  return best;
}

// Flattens a YAML mapping into "a.b.c" → scalar/sequence nodes. A data.files entry is a sequence of
// maps and stays whole (its field parses it).
// Recipes nest two levels (section.key); deeper maps are kept whole and reported as unknown keys, which
// also stops an alias that contains itself (`a: &x {b: *x}`) from recursing without end.
void flatten(const YAML::Node& n, const std::string& prefix, std::vector<std::pair<std::string, YAML::Node>>* out,
             const std::vector<Field>& fields, int depth = 0) {
  constexpr int kMaxDepth = 4;
  const bool is_field = std::any_of(fields.begin(), fields.end(), [&](const Field& f) { return f.key == prefix; });
  if (n.IsMap() && !is_field && depth < kMaxDepth) {
    for (const auto& kv : n)
      flatten(kv.second, prefix.empty() ? kv.first.Scalar() : prefix + "." + kv.first.Scalar(), out, fields, depth + 1);
  } else {
    out->emplace_back(prefix, n);
  }
}

// (key within the section, message) for every impossible export setting.
std::vector<std::pair<std::string, std::string>> export_problems(const ExportSection& e) {
  std::vector<std::pair<std::string, std::string>> p;
  if (e.dtype != "auto" && e.dtype != "bfloat16" && e.dtype != "float16" && e.dtype != "float32")
    p.emplace_back("dtype", "'" + e.dtype + "' is not one of: auto, bfloat16, float16, float32");
  if (e.bits != 4 && e.bits != 8) p.emplace_back("bits", "must be 4 or 8, found " + std::to_string(e.bits));
  if (e.format == ExportFormat::kAwq && e.bits != 4) p.emplace_back("bits", "AWQ's GEMM layout holds 4 bits only, found " + std::to_string(e.bits));
  if (e.gguf_type != "f16" && e.gguf_type != "q8_0" && e.gguf_type != "q4_k_m")
    p.emplace_back("gguf_type", "'" + e.gguf_type + "' is not one of: f16, q8_0, q4_k_m");
  if (e.group_size != -1 && (e.group_size < 8 || e.group_size % 8 != 0))
    p.emplace_back("group_size", "must be -1 (one group per row) or a positive multiple of 8, found " + std::to_string(e.group_size));
  if (!(e.damp > 0 && e.damp < 1)) p.emplace_back("damp", "must be in (0, 1), found " + yaml_number(e.damp));
  if (e.static_groups && !e.desc_act) p.emplace_back("static_groups", "only applies with desc_act (act-order)");
  if (e.calib.empty()) p.emplace_back("calib", "must be 'recipe' or a text file");
  if (e.calib_samples < 1) p.emplace_back("calib_samples", "must be positive");
  if (e.calib_len < 2) p.emplace_back("calib_len", "must be at least 2 tokens");
  if (e.eval_len < 2) p.emplace_back("eval_len", "must be at least 2 tokens");
  if (e.eval_windows < 0) p.emplace_back("eval_windows", "must be >= 0 (0 = all)");
  return p;
}

// The ecosystem's names (HF Trainer's optim, formats.md §2.1) set bits and paged, whatever the long form says
// (as the Trainer's optim string does; so `--set optimizer.name=adamw_8bit` on a recipe with `paged: true` means
// what it says). The resolved recipe says "adamw" with both: --print-config, the run's config.yaml and the hash
// have one spelling.
void resolve_optimizer_name(OptimizerSection& o) {
  static const std::vector<std::tuple<std::string, int64_t, bool>> kNames = {
      {"adamw_32bit", 32, false}, {"adamw_8bit", 8, false}, {"paged_adamw_32bit", 32, true}, {"paged_adamw_8bit", 8, true}};
  for (const auto& [name, bits, paged] : kNames) {
    if (o.name != name) continue;
    o.name = "adamw";
    o.bits = bits;
    o.paged = paged;
    return;
  }
}

void validate(const Recipe& r, Problems& p) {
  auto positive = [&](const std::string& key, double v) {
    if (!(v > 0)) p.add(key, "must be positive, found " + yaml_number(v));
  };
  if (r.model.path.empty()) p.add("model.path", "missing (the Hugging Face model directory to fine-tune)");
  if (r.model.target_modules.empty()) p.add("model.target_modules", "must name at least one module");
  for (const auto& m : r.model.target_modules)
    if (!is_target_module_name(m))
      p.add("model.target_modules", "unknown module '" + m + "' (expected " + target_module_names() + ")");
  if (!ops::valid_blocksize(r.quantization.blocksize))
    p.add("quantization.blocksize", std::string("must be ") + ops::kBlocksizeChoices + ", found " +
                                        std::to_string(r.quantization.blocksize));
  positive("lora.r", static_cast<double>(r.lora.r));
  positive("lora.alpha", r.lora.alpha);
  if (r.lora.dropout < 0 || r.lora.dropout >= 1) p.add("lora.dropout", "must be in [0, 1), found " + yaml_number(r.lora.dropout));
  positive("training.micro_batch_size", static_cast<double>(r.training.micro_batch_size));
  positive("training.gradient_accumulation", static_cast<double>(r.training.gradient_accumulation));
  if (r.training.max_steps < 0) p.add("training.max_steps", "must be >= 0");
  if (r.training.max_steps == 0) positive("training.epochs", r.training.epochs);
  positive("training.learning_rate", r.training.learning_rate);
  if (r.training.warmup_steps < 0) p.add("training.warmup_steps", "must be >= 0");
  if (r.training.max_grad_norm < 0) p.add("training.max_grad_norm", "must be >= 0 (0 disables clipping)");
  if (r.training.weight_decay < 0) p.add("training.weight_decay", "must be >= 0");
  if (r.optimizer.name != "adamw")
    p.add("optimizer.name", "'" + r.optimizer.name + "' is not supported (expected adamw, adamw_32bit, adamw_8bit, paged_adamw_32bit, paged_adamw_8bit)");
  if (r.optimizer.bits != 32 && r.optimizer.bits != 8) p.add("optimizer.bits", "must be 32 or 8, found " + std::to_string(r.optimizer.bits));
  if (r.optimizer.min_8bit_size < 0) p.add("optimizer.min_8bit_size", "must be >= 0");
  if (r.optimizer.device_budget_mb < 0) p.add("optimizer.device_budget_mb", "must be >= 0 (0 = what the memory planner leaves free)");
  if (r.optimizer.page_kb < 4) p.add("optimizer.page_kb", "must be at least 4 (a page holds one 256-element block of 32-bit state: 2 KiB + alignment)");
  if (r.optimizer.beta1 < 0 || r.optimizer.beta1 >= 1) p.add("optimizer.beta1", "must be in [0, 1)");
  if (r.optimizer.beta2 < 0 || r.optimizer.beta2 >= 1) p.add("optimizer.beta2", "must be in [0, 1)");
  positive("optimizer.eps", r.optimizer.eps);
  positive("schedule.log_every", static_cast<double>(r.schedule.log_every));
  if (r.logging.console != "text" && r.logging.console != "json") p.add("logging.console", "'" + r.logging.console + "': expected text or json");
  for (auto [k, v] : {std::pair<const char*, int64_t>{"schedule.eval_every", r.schedule.eval_every}, {"schedule.save_every", r.schedule.save_every},
                      {"schedule.keep_last", r.schedule.keep_last}, {"schedule.eval_batches", r.schedule.eval_batches}})
    if (v < 0) p.add(k, "must be >= 0");
  validate_data(r.data, p);
  for (const auto& [key, msg] : export_problems(r.export_)) p.add("export." + key, msg);
  positive("distributed.timeout", r.distributed.timeout);
  if (r.distributed.world_size < 0) p.add("distributed.world_size", "must be >= 0 (0 = as many ranks as launched)");
  positive("distributed.bucket_mb", r.distributed.bucket_mb);
}

// ---- the data section: fields of data/dataset/data_config.h ----

// A file entry is a path, or {path, weight, format}.
bool parse_files(const YAML::Node& n, std::vector<DataFile>* out, std::string* why) {
  out->clear();
  if (n.IsNull()) return true;
  std::vector<YAML::Node> entries;  // a single entry may be written without the list
  if (n.IsSequence()) {
    for (const auto& e : n) entries.push_back(e);
  } else {
    entries.push_back(n);
  }
  for (const auto& e : entries) {
    DataFile f;
    if (e.IsScalar()) {
      f.path = e.Scalar();
    } else if (e.IsMap()) {
      for (const auto& kv : e) {
        const std::string k = kv.first.Scalar();
        if (k == "path") {
          if (!parse_value(kv.second, &f.path, why)) return *why = "path: " + *why, false;
        } else if (k == "weight") {
          if (!parse_value(kv.second, &f.weight, why)) return *why = "weight: " + *why, false;
          if (!(f.weight > 0)) return *why = "weight must be positive", false;
        } else if (k == "format") {
          try {
            f.format = parse_data_format(kv.second.Scalar(), "format");
          } catch (const UsageError& e2) {
            return *why = e2.what(), false;
          }
        } else {
          return *why = "unknown file key '" + k + "' (expected path, weight, format)", false;
        }
      }
      if (f.path.empty()) return *why = "a file entry needs a path", false;
    } else {
      return *why = "expected a path or {path, weight, format}", false;
    }
    out->push_back(f);
  }
  return true;
}

std::string show_files(const std::vector<DataFile>& files) {
  std::string s = "[";
  for (std::size_t i = 0; i < files.size(); ++i) {
    const auto& f = files[i];
    s += (i ? ", " : "") + std::string("{path: ") + yaml_scalar(f.path.string()) + ", weight: " + yaml_number(f.weight);
    if (f.format) s += ", format: " + to_string(*f.format);
    s += "}";
  }
  return s + "]";
}

// A template variable's YAML value as JSON text: true/false/null and numbers typed, other scalars
// strings, lists and mappings as JSON lists and objects (JSON is also valid YAML, so it prints back).
std::string yaml_to_json_text(const YAML::Node& n) {
  if (n.IsNull()) return "null";
  if (n.IsScalar()) {
    const std::string& v = n.Scalar();
    if (n.Tag() != "!" && (v == "true" || v == "false" || v == "null")) return v;
    if (v == "True" || v == "False") return v == "True" ? "true" : "false";
    if (n.Tag() != "!") {
      char* end = nullptr;
      std::strtod(v.c_str(), &end);
      if (!v.empty() && end && *end == '\0' && v.find_first_not_of("0123456789+-.eE") == std::string::npos) return v;
    }
    std::string out = "\"";
    for (char c : v) {
      if (c == '"' || c == '\\') out += '\\';
      if (c == '\n') { out += "\\n"; continue; }
      out += c;
    }
    return out + "\"";
  }
  std::string out;
  if (n.IsSequence()) {
    out = "[";
    for (const auto& e : n) out += (out.size() > 1 ? ", " : "") + yaml_to_json_text(e);
    return out + "]";
  }
  out = "{";
  for (const auto& kv : n) out += (out.size() > 1 ? ", " : "") + yaml_to_json_text(kv.first) + ": " + yaml_to_json_text(kv.second);
  return out + "}";
}

template <class E>
Field data_enum(const std::string& key, E DataConfig::*member, E (*parse)(std::string_view, std::string_view),
                std::string (*show)(E)) {
  return {"data." + key,
          [=](const YAML::Node& n, Recipe& r, std::string* why) {
            if (!n.IsScalar()) return *why = "expected a name", false;
            try {
              r.data.*member = parse(n.Scalar(), "data." + key);
            } catch (const UsageError& e) {
              *why = e.what();
              return false;
            }
            return true;
          },
          [=](const Recipe& r) { return show(r.data.*member); }};
}

std::vector<Field> data_fields() {
  std::vector<Field> f = {
      {"data.files", [](const YAML::Node& n, Recipe& r, std::string* why) { return parse_files(n, &r.data.files, why); },
       [](const Recipe& r) { return show_files(r.data.files); }},
      {"data.eval_files", [](const YAML::Node& n, Recipe& r, std::string* why) { return parse_files(n, &r.data.eval_files, why); },
       [](const Recipe& r) { return show_files(r.data.eval_files); }},
      data_enum<DataFormat>("format", &DataConfig::format, &parse_data_format, [](DataFormat v) { return to_string(v); }),
      data_enum<ChatTemplateName>("template_name", &DataConfig::template_name, &parse_chat_template_name,
                                  [](ChatTemplateName v) { return to_string(v); }),
      QT_F(std::string, "data.chat_template", data.chat_template, show_str),
      {"data.template_vars",
       [](const YAML::Node& n, Recipe& r, std::string* why) {
         r.data.template_vars.clear();
         if (n.IsNull()) return true;
         if (!n.IsMap()) return *why = "expected a mapping NAME: value (e.g. enable_thinking: false)", false;
         for (const auto& kv : n) {
           if (!kv.first.IsScalar()) return *why = "variable names must be names", false;
           r.data.template_vars.emplace_back(kv.first.Scalar(), yaml_to_json_text(kv.second));
         }
         return true;
       },
       [](const Recipe& r) {
         std::string s = "{";
         for (const auto& [k, v] : r.data.template_vars) s += (s.size() > 1 ? ", " : "") + yaml_scalar(k) + ": " + v;
         return s + "}";
       }},
      QT_F(std::string, "data.template_date", data.template_date, show_str),
      data_enum<TrainOn>("train_on", &DataConfig::train_on, &parse_train_on, [](TrainOn v) { return to_string(v); }),
      data_enum<OnError>("on_error", &DataConfig::on_error, &parse_on_error, [](OnError v) { return to_string(v); }),
      QT_F(int64_t, "data.source_max_len", data.source_max_len, show_i64),
      QT_F(int64_t, "data.target_max_len", data.target_max_len, show_i64),
      QT_F(int64_t, "data.max_seq_len", data.max_seq_len, show_i64),
      QT_F(bool, "data.packing", data.packing, show_bool),
      QT_F(bool, "data.group_by_length", data.group_by_length, show_bool),
      QT_F(double, "data.eval_fraction", data.eval_fraction, show_f64),
      QT_F(std::filesystem::path, "data.cache_dir", data.cache_dir, show_path),
      QT_F(uint64_t, "data.seed", data.seed, show_u64),
      {"data.sharegpt_role_map",
       [](const YAML::Node& n, Recipe& r, std::string* why) {
         r.data.sharegpt_role_map.clear();
         if (n.IsNull()) return true;
         if (!n.IsMap()) return *why = "expected a mapping from -> role", false;
         for (const auto& kv : n) {
           if (!kv.first.IsScalar() || !kv.second.IsScalar()) return *why = "expected a mapping from -> role (names, not lists)", false;
           r.data.sharegpt_role_map[kv.first.Scalar()] = kv.second.Scalar();
         }
         return true;
       },
       [](const Recipe& r) {
         std::string s = "{";
         for (const auto& [k, v] : r.data.sharegpt_role_map) s += (s.size() > 1 ? ", " : "") + yaml_scalar(k) + ": " + yaml_scalar(v);
         return s + "}";
       }},
  };
  return f;
}

void validate_data(const DataConfig& d, Problems& p) {
  if (d.files.empty()) p.add("data.files", "missing (at least one dataset file)");
  for (const auto& [key, msg] : data_config_problems(d)) p.add("data." + key, msg);
}

}  // namespace

Recipe load_recipe(const std::filesystem::path& path, const std::vector<std::string>& overrides) {
  YAML::Node root;
  try {
    root = YAML::LoadFile(path.string());
  } catch (const YAML::BadFile&) {
    throw UsageError(path.string() + ": cannot read the recipe");
  } catch (const YAML::ParserException& e) {
    throw UsageError(path.string() + ":" + std::to_string(e.mark.line + 1) + ": not valid YAML: " + e.msg);
  }
  if (!root.IsMap()) throw UsageError(path.string() + ": a recipe is a YAML mapping of sections (model, lora, data, training, ...)");

  const std::vector<Field> fields = all_fields();
  Recipe r;
  r.source = path;
  Problems p{path.string(), {}};
  auto apply = [&](const std::string& key, const YAML::Node& node, const std::string& where) {
    auto it = std::find_if(fields.begin(), fields.end(), [&](const Field& f) { return f.key == key; });
    if (it == fields.end()) {
      p.list.push_back(where + ": unknown key '" + key + "' (did you mean '" + nearest_key(key, fields) + "'?)");
      return;
    }
    std::string why;
    if (!it->set(node, r, &why)) p.list.push_back(where + ": " + key + ": " + why);
  };
  std::vector<std::pair<std::string, YAML::Node>> flat;
  flatten(root, "", &flat, fields);
  for (const auto& [key, node] : flat) apply(key, node, path.string() + ":" + std::to_string(node.Mark().line + 1));
  for (const auto& o : overrides) {
    const auto eq = o.find('=');
    if (eq == std::string::npos || eq == 0) {
      p.list.push_back("--set '" + o + "': expected key=value, e.g. training.learning_rate=1e-4");
      continue;
    }
    YAML::Node v;
    try {
      v = YAML::Load(o.substr(eq + 1));
    } catch (const YAML::Exception& e) {
      p.list.push_back("--set '" + o + "': value is not valid YAML: " + e.msg);
      continue;
    }
    apply(o.substr(0, eq), v, "--set");
  }
  resolve_optimizer_name(r.optimizer);
  validate(r, p);  // values that failed to parse kept their defaults, so nothing is reported twice
  if (!p.list.empty()) {
    std::string msg = "the recipe has " + std::to_string(p.list.size()) + " problem" + (p.list.size() > 1 ? "s" : "") + ":";
    for (const auto& m : p.list) msg += "\n  " + m;
    throw UsageError(msg);
  }
  return r;
}

std::string recipe_to_yaml(const Recipe& r) {
  std::string out, section;
  // What the recipe wrote where a Hub id was resolved: a comment, so config.yaml stays loadable as is.
  std::map<std::string, std::string> written;
  if (r.as_written) {
    Recipe w = r;
    w.model.path = r.as_written->model_path;
    w.data.files = r.as_written->files;
    w.data.eval_files = r.as_written->eval_files;
    for (const char* key : {"model.path", "data.files", "data.eval_files"}) written[key] = "";
    for (const auto& f : all_fields())
      if (written.count(f.key) && f.get(w) != f.get(r)) written[f.key] = f.get(w);
  }
  for (const auto& f : all_fields()) {
    const auto dot = f.key.find('.');
    const std::string sec = dot == std::string::npos ? "" : f.key.substr(0, dot);
    if (sec != section) {
      section = sec;
      if (!sec.empty()) out += sec + ":\n";
    }
    out += (sec.empty() ? f.key : "  " + f.key.substr(dot + 1)) + ": " + f.get(r);
    if (const auto it = written.find(f.key); it != written.end() && !it->second.empty()) out += "  # from the Hub: " + it->second;
    out += "\n";
  }
  return out;
}

void validate_export_section(const ExportSection& e, const std::string& where) {
  const auto problems = export_problems(e);
  if (problems.empty()) return;
  std::string msg;
  for (const auto& [key, m] : problems) msg += (msg.empty() ? "" : "\n") + where + ": " + key + ": " + m;
  throw UsageError(msg);
}

std::string recipe_hash(const Recipe& r) {
  // FNV-1a over every resolved value except those a resumed run may change: its intervals, where it
  // writes and caches, how long it runs (to train further), and the device (moving a run between
  // machines; a dropout stream that cannot follow is refused by the trainer with its own message).
  if (r.as_written) {  // Hub ids as written: the snapshot paths they resolved to differ between machines
    Recipe w = r;
    w.model.path = r.as_written->model_path;
    w.data.files = r.as_written->files;
    w.data.eval_files = r.as_written->eval_files;
    w.as_written.reset();
    return recipe_hash(w);
  }
  uint64_t h = 1469598103934665603ull;
  for (const auto& f : all_fields()) {
    if (f.key.rfind("distributed.", 0) == 0) continue;  // how a run is launched changes no bit of it
    if (f.key.rfind("schedule.", 0) == 0 || f.key == "output_dir" || f.key == "training.max_steps" ||
        f.key == "training.epochs" || f.key == "training.device" || f.key == "data.cache_dir" || f.key.rfind("export.", 0) == 0 ||
        f.key.rfind("logging.", 0) == 0 ||
        // Where the optimizer state and the recompute checkpoints live changes no bit of the run (paged is
        // hashed at its default so runs saved before paging existed keep their hash); min_8bit_size only
        // matters with 8-bit state.
        f.key == "optimizer.device_budget_mb" || f.key == "optimizer.page_kb" || f.key == "training.offload_checkpoints" ||
        // TF32 only changes CUDA matmuls' rounding, like moving the run to another card.
        f.key == "training.tf32" ||
        (f.key == "optimizer.min_8bit_size" && r.optimizer.bits == 32))
      continue;
    std::string value = f.key == "optimizer.paged" ? f.get(Recipe{}) : f.get(r);
    // lora.dtype's default became auto (= the compute dtype: float32 on the CPU, where every earlier run
    // trained, with float32 the old default): hashed as float32 so those runs keep their hash.
    if (f.key == "lora.dtype" && r.lora.dtype == DtypeChoice::kAuto) value = "float32";
    for (unsigned char c : f.key + "=" + value + "\n") h = (h ^ c) * 1099511628211ull;
  }
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

DtypeChoice resolved_compute_dtype(const TrainingSection& t, bool cuda) {
  if (t.compute_dtype != DtypeChoice::kAuto) return t.compute_dtype;
  return cuda ? DtypeChoice::kBFloat16 : DtypeChoice::kFloat32;
}

DtypeChoice resolved_lora_dtype(const Recipe& r, bool cuda) {
  return r.lora.dtype != DtypeChoice::kAuto ? r.lora.dtype : resolved_compute_dtype(r.training, cuda);
}

}  // namespace qtrain
