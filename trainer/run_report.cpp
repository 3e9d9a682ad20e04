#include "trainer/run_report.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <iterator>
#include <map>
#include <optional>

#include <nlohmann/json.hpp>

#include "data/error.h"
#include "data/io/atomic_file.h"
#include "data/io/hf_config.h"
#include "trainer/svg_chart.h"

namespace qtrain {
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// One line of metrics.jsonl: kind, step, time and the values (null → NaN).
struct Record {
  std::string kind;
  int64_t step = 0;
  std::optional<double> time;
  std::map<std::string, double> values;
};

struct Metrics {
  std::vector<Record> records;
  int64_t bad_lines = 0;  // torn or foreign lines, skipped

  std::vector<const Record*> of(const std::string& kind) const {
    std::vector<const Record*> out;
    for (const auto& r : records)
      if (r.kind == kind) out.push_back(&r);
    return out;
  }
  std::vector<std::pair<double, double>> series(const std::string& kind, const std::string& key, double scale = 1) const {
    std::vector<std::pair<double, double>> out;
    for (const auto* r : of(kind))
      if (auto it = r->values.find(key); it != r->values.end()) out.emplace_back(static_cast<double>(r->step), it->second * scale);
    return out;
  }
};

Metrics read_metrics(const fs::path& file) {
  std::ifstream in(file);
  if (!in) throw InputError(file.string() + ": cannot open for reading");
  Metrics m;
  for (std::string line; std::getline(in, line);) {
    if (line.empty()) continue;
    const json j = json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (!j.is_object() || !j.contains("kind") || !j["kind"].is_string() || !j.contains("step") || !j["step"].is_number_integer()) {
      ++m.bad_lines;
      continue;
    }
    Record r;
    r.kind = j["kind"].get<std::string>();
    r.step = j["step"].get<int64_t>();
    for (const auto& [k, v] : j.items()) {
      if (k == "kind" || k == "step") continue;
      if (k == "time") {
        if (v.is_number()) r.time = v.get<double>();
        continue;
      }
      if (v.is_number()) r.values[k] = v.get<double>();
      else if (v.is_null()) r.values[k] = NAN;
    }
    m.records.push_back(std::move(r));
  }
  // A resumed run's file is in step order already; sorting keeps a hand-merged one drawable.
  std::stable_sort(m.records.begin(), m.records.end(), [](const Record& a, const Record& b) { return a.step < b.step; });
  return m;
}

std::string fmt(double v, const char* f = "%.4g") {
  if (!std::isfinite(v)) return "—";
  char b[64];
  std::snprintf(b, sizeof b, f, v);
  return b;
}
std::string count(int64_t v) {  // 1234567 → 1 234 567 (thin spaces)
  std::string s = std::to_string(v), out;
  const size_t start = v < 0 ? 1 : 0;
  for (size_t i = 0; i < s.size(); ++i) {
    if (i > start && (s.size() - i) % 3 == 0) out += "\u2009";
    out += s[i];
  }
  return out;
}
std::string duration(double s) {
  if (!std::isfinite(s) || s < 0) return "—";
  const auto t = static_cast<int64_t>(std::llround(s));
  char b[64];
  if (t >= 3600) std::snprintf(b, sizeof b, "%lldh %02lldm", static_cast<long long>(t / 3600), static_cast<long long>(t % 3600 / 60));
  else if (t >= 60) std::snprintf(b, sizeof b, "%lldm %02llds", static_cast<long long>(t / 60), static_cast<long long>(t % 60));
  else std::snprintf(b, sizeof b, "%llds", static_cast<long long>(t));
  return b;
}
std::string local_time(double unix_s) {
  const std::time_t t = static_cast<std::time_t>(unix_s);
  std::tm tm{};
  localtime_r(&t, &tm);
  char b[64];
  std::strftime(b, sizeof b, "%Y-%m-%d %H:%M", &tm);
  return b;
}
std::string mib(double bytes) { return fmt(bytes / (1 << 20), "%.2f") + " MiB"; }

// A scalar of config.yaml as text, or "" when absent.
std::string yaml_str(const YAML::Node& root, const std::string& section, const std::string& key) {
  try {
    const YAML::Node n = root[section][key];
    if (!n || !n.IsDefined()) return "";
    if (n.IsScalar()) return n.as<std::string>();
    YAML::Emitter e;
    e << YAML::Flow << n;
    return e.c_str();
  } catch (const YAML::Exception&) {
    return "";
  }
}

// The data files of config.yaml (a list of {path, weight} or of paths).
std::string data_files(const YAML::Node& root) {
  std::string out;
  try {
    for (const auto& f : root["data"]["files"]) {
      const std::string p = f.IsMap() ? f["path"].as<std::string>() : f.as<std::string>();
      out += (out.empty() ? "" : ", ") + p;
    }
  } catch (const YAML::Exception&) {
  }
  return out;
}

struct Page {
  std::string html;
  void row(const std::string& k, const std::string& v_html) {
    if (!v_html.empty()) html += "<tr><th>" + html_escape(k) + "</th><td>" + v_html + "</td></tr>";
  }
};

const char* kStyle = R"(
:root{--fg:#1d2330;--muted:#5b6475;--line:#dfe3ea;--card:#f6f8fb;--accent:#2563eb;--eval:#dc2626}
*{box-sizing:border-box}
body{margin:0;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:var(--fg);background:#fff}
main{max-width:1180px;margin:0 auto;padding:24px 20px 48px}
h1{font-size:1.6em;margin:0 0 4px;word-break:break-all}
h2{font-size:1.2em;margin:32px 0 12px;padding-bottom:4px;border-bottom:1px solid var(--line)}
h3{font-size:1em;margin:18px 0 8px}
.status{color:var(--muted);margin:0 0 16px}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:.85em;font-weight:600;margin-right:6px}
.badge.finished{background:#dcfce7;color:#166534}.badge.partial{background:#fef3c7;color:#92400e}
.kpis{display:grid;grid-template-columns:repeat(auto-fit,minmax(180px,1fr));gap:12px}
.kpi{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:10px 14px}
.kpi .v{font-size:1.35em;font-weight:600;font-variant-numeric:tabular-nums}
.kpi .k{color:var(--muted);font-size:.85em}
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(340px,1fr));gap:14px}
.charts figure{margin:0;background:var(--card);border:1px solid var(--line);border-radius:8px;padding:6px}
svg.chart{width:100%;height:auto;display:block}
svg .title{font-size:13px;font-weight:600;fill:var(--fg)}
svg .unit,svg .legend{font-size:11px;fill:var(--muted);font-weight:400}
svg .grid line{stroke:#e5e7eb;stroke-width:1}
svg .ylab{font-size:10px;fill:var(--muted);text-anchor:end}
svg .xlab{font-size:10px;fill:var(--muted);text-anchor:middle}
svg .xname{font-size:10px;fill:var(--muted);text-anchor:middle}
svg .frame{fill:none;stroke:#cbd2dc}
svg .series{stroke-width:1.8;stroke-linejoin:round;stroke-linecap:round}
svg .bar{fill:var(--accent);opacity:.85}
svg .empty{font-size:13px;fill:var(--muted);text-anchor:middle}
.two{display:grid;grid-template-columns:repeat(auto-fit,minmax(340px,1fr));gap:18px;align-items:start}
.scroll{overflow-x:auto}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
th,td{text-align:left;padding:5px 10px;border-bottom:1px solid var(--line);vertical-align:top}
table.kv th{width:34%;color:var(--muted);font-weight:500}
table.grid th{background:var(--card);font-weight:600}
td.n,th.n{text-align:right}
td{word-break:break-word}
ul.findings{margin:6px 0;padding-left:20px}
ul.findings li.warning{color:#92400e}
pre{background:var(--card);border:1px solid var(--line);border-radius:6px;padding:10px;overflow-x:auto;font-size:12.5px}
details summary{cursor:pointer;color:var(--accent)}
footer{margin-top:40px;color:var(--muted);font-size:.85em}
@media (max-width:600px){main{padding:14px 10px 32px}h1{font-size:1.25em}.charts,.two{grid-template-columns:1fr}table.kv th{width:42%}}
)";

std::string kpi(const std::string& value, const std::string& label) {
  return "<div class=\"kpi\"><div class=\"v\">" + value + "</div><div class=\"k\">" + html_escape(label) + "</div></div>";
}

// The quality table of one export directory's export_report.json.
std::string export_section(const fs::path& dir, const json& j) {
  std::string h = "<h3>" + html_escape(dir.filename().string()) + "</h3><table class=\"kv\">";
  auto str = [&](const json& v) { return v.is_string() ? v.get<std::string>() : v.is_null() ? std::string() : v.dump(); };
  h += "<tr><th>format</th><td>" + html_escape(str(j.value("format", json()))) + "</td></tr>";
  if (j.contains("size") && j["size"].is_object()) {
    const auto& s = j["size"];
    h += "<tr><th>size on disk</th><td>" + mib(s.value("bytes_on_disk", 0.0)) + " (" + fmt(100 * s.value("ratio_to_bf16", 0.0), "%.1f") +
         "% of bf16, " + mib(s.value("bf16_bytes", 0.0)) + ")</td></tr>";
  }
  if (j.contains("evaluation") && j["evaluation"].is_object()) {
    const auto& e = j["evaluation"];
    if (e.contains("text") && e["text"].is_string())
      h += "<tr><th>text corpus</th><td>" + html_escape(e["text"].get<std::string>()) + ", " + count(e.value("windows", int64_t{0})) +
           " windows of " + count(e.value("seq_len", int64_t{0})) + " tokens</td></tr>";
    if (e.value("heldout_examples", int64_t{0}) > 0)
      h += "<tr><th>held-out</th><td>" + count(e.value("heldout_examples", int64_t{0})) + " examples of the run</td></tr>";
  }
  h += "</table>";
  if (j.contains("models") && j["models"].is_array()) {
    h += "<div class=\"scroll\"><table class=\"grid\"><tr><th>model</th><th class=\"n\">text ppl</th><th class=\"n\">KL vs merged</th>"
         "<th class=\"n\">held-out ppl</th><th class=\"n\">size</th></tr>";
    for (const auto& m : j["models"]) {
      if (!m.is_object()) continue;
      const json text = m.value("text", json::object()), held = m.value("heldout", json::object());
      const double kl = text.value("kl", -1.0);
      h += "<tr><td>" + html_escape(m.value("name", std::string("?"))) + "</td><td class=\"n\">" +
           (text.contains("ppl") ? fmt(text.value("ppl", NAN), "%.4f") : "—") + "</td><td class=\"n\">" +
           (kl >= 0 ? fmt(kl, "%.3e") : "—") + "</td><td class=\"n\">" + (held.contains("ppl") ? fmt(held.value("ppl", NAN), "%.4f") : "—") +
           "</td><td class=\"n\">" + (m.contains("bytes") ? mib(m.value("bytes", 0.0)) : "—") + "</td></tr>";
    }
    h += "</table></div>";
  }
  return h;
}

std::string data_section(const json& d) {
  std::string h = "<div class=\"two\"><div><table class=\"grid\"><tr><th></th><th class=\"n\">files</th><th class=\"n\">eval_files</th></tr>";
  const json tr = d.value("train", json::object()), ev = d.value("eval", json::object());
  const std::pair<const char*, const char*> rows[] = {
      {"records", "records read"}, {"examples", "examples kept"}, {"skipped", "skipped (bad records)"},
      {"dropped_no_labels", "dropped (nothing to train)"}, {"truncated", "truncated"}, {"truncated_lost_eos", "truncated, EOS lost"},
      {"without_trained_eos", "without a trained EOS"}, {"tokens", "tokens"}, {"label_tokens", "trained tokens"}};
  for (const auto& [key, label] : rows)
    h += std::string("<tr><td>") + label + "</td><td class=\"n\">" + count(tr.value(key, int64_t{0})) + "</td><td class=\"n\">" +
         count(ev.value(key, int64_t{0})) + "</td></tr>";
  h += "<tr><td>examples after the split</td><td class=\"n\">" + count(d.value("train_examples", int64_t{0})) + "</td><td class=\"n\">" +
       count(d.value("eval_examples", int64_t{0})) + "</td></tr></table>";
  h += "<table class=\"kv\"><tr><th>format</th><td>" + html_escape(d.value("format", std::string())) + "</td></tr><tr><th>template</th><td>" +
       html_escape(d.value("template", std::string())) + "</td></tr>";
  if (!d.value("pad_action", std::string()).empty())
    h += "<tr><th>padding</th><td>" + html_escape(d.value("pad_action", std::string())) + "</td></tr>";
  h += "</table></div><div>";
  std::vector<std::pair<std::string, double>> bars;
  if (d.contains("length_histogram") && d["length_histogram"].is_array())
    for (const auto& b : d["length_histogram"])
      bars.emplace_back(std::to_string(b.value("min", int64_t{0})) + "–" + std::to_string(b.value("max", int64_t{0})),
                        b.value("count", 0.0));
  const json len = d.value("lengths", json::object());
  h += "<figure class=\"hist\">" +
       render_svg_bars("Length histogram (" + count(len.value("examples", int64_t{0})) + " examples, mean " + fmt(len.value("mean", 0.0), "%.0f") +
                           ", max " + count(len.value("max", int64_t{0})) + ")",
                       bars) +
       "</figure>";
  std::vector<std::string> findings;
  for (const char* key : {"findings", "warnings"})
    if (d.contains(key) && d[key].is_array())
      for (const auto& f : d[key])
        if (f.is_string()) findings.push_back(f.get<std::string>());
  h += "<h3>Linter findings</h3>";
  if (findings.empty()) h += "<p>none</p>";
  else {
    h += "<ul class=\"findings\">";
    for (const auto& f : findings) h += std::string("<li class=\"") + (f.rfind("warning", 0) == 0 ? "warning" : "note") + "\">" + html_escape(f) + "</li>";
    h += "</ul>";
  }
  return h + "</div></div>";
}

}  // namespace

std::string run_report_html(const fs::path& run_dir) {
  const fs::path metrics_file = run_dir / "metrics.jsonl";
  if (!fs::is_regular_file(metrics_file))
    throw InputError(run_dir.string() + ": no metrics.jsonl (expected a qtrain run directory: the output_dir of a recipe)");
  const Metrics m = read_metrics(metrics_file);
  const auto train = m.of("train"), evals = m.of("eval");

  YAML::Node cfg;
  std::string cfg_text, cfg_problem;
  if (fs::is_regular_file(run_dir / "config.yaml")) {
    std::ifstream in(run_dir / "config.yaml");
    cfg_text.assign(std::istreambuf_iterator<char>(in), {});
    try {
      cfg = YAML::Load(cfg_text);
    } catch (const YAML::Exception& e) {
      cfg_problem = "config.yaml does not parse: " + std::string(e.what());
    }
  }
  const bool has_cfg = cfg && cfg.IsMap();
  auto cfg_value = [&](const std::string& s, const std::string& k) { return has_cfg ? yaml_str(cfg, s, k) : std::string(); };

  // Status: finished when the final adapter is there and the last logged step is the last step.
  const int64_t last_step = train.empty() ? 0 : train.back()->step;
  int64_t max_steps = 0;
  try {
    max_steps = std::stoll(cfg_value("training", "max_steps"));
  } catch (...) {
  }
  const bool finished = fs::is_directory(run_dir / "adapter") && (max_steps == 0 || last_step >= max_steps);
  std::optional<double> t_first, t_last;
  for (const auto& r : m.records)
    if (r.time) {
      if (!t_first) t_first = r.time;
      t_last = std::max(t_last.value_or(*r.time), *r.time);
    }

  std::string name = fs::absolute(run_dir).lexically_normal().filename().string();
  if (name.empty()) name = fs::absolute(run_dir).lexically_normal().parent_path().filename().string();
  std::string h = "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
                  "<title>qtrain run " + html_escape(name) + "</title><style>" + kStyle + "</style></head><body><main>";
  h += "<h1>" + html_escape(name) + "</h1><p class=\"status\"><span class=\"badge " + (finished ? "finished\">finished" : "partial\">not finished") +
       "</span>step " + count(last_step) + (max_steps > 0 ? " of " + count(max_steps) : "") +
       (t_first ? " · " + local_time(*t_first) + " → " + local_time(*t_last) : "") + " · " + html_escape(fs::absolute(run_dir).lexically_normal().string()) +
       "</p>";

  // Key numbers.
  auto last_value = [&](const std::vector<const Record*>& rs, const std::string& k) -> double {
    for (auto it = rs.rbegin(); it != rs.rend(); ++it)
      if (auto v = (*it)->values.find(k); v != (*it)->values.end() && std::isfinite(v->second)) return v->second;
    return NAN;
  };
  auto first_value = [&](const std::vector<const Record*>& rs, const std::string& k) -> double {
    for (const auto* r : rs)
      if (auto v = r->values.find(k); v != r->values.end() && std::isfinite(v->second)) return v->second;
    return NAN;
  };
  h += "<div class=\"kpis\">";
  h += kpi(fmt(last_value(train, "loss"), "%.4f"), "final train loss");
  if (!evals.empty()) {
    h += kpi(fmt(first_value(evals, "eval_loss"), "%.3f") + " → " + fmt(last_value(evals, "eval_loss"), "%.3f"),
             "held-out loss, step " + std::to_string(evals.front()->step) + " → " + std::to_string(evals.back()->step));
    h += kpi(fmt(100 * first_value(evals, "eval_token_acc"), "%.1f") + "% → " + fmt(100 * last_value(evals, "eval_token_acc"), "%.1f") + "%",
             "held-out next-token accuracy");
  }
  const double tokens = last_value(train, "tokens");
  h += kpi(std::isfinite(tokens) ? count(static_cast<int64_t>(tokens)) : "—", "target tokens trained");
  h += kpi(t_first ? duration(*t_last - *t_first) : "—", "first to last record (wall clock)");
  h += kpi(fmt(last_value(train, "peak_mem_mib"), "%.0f") + " MiB", "peak memory");
  h += "</div>";

  // Curves.
  h += "<h2>Curves</h2><div class=\"charts\">";
  const std::string blue = "#2563eb", red = "#dc2626";
  std::vector<LineChart> charts = {
      {"Loss", "nats per target token",
       {{"train", blue, m.series("train", "loss"), false}, {"held-out", red, m.series("eval", "eval_loss"), true}}},
      {"Learning rate", "", {{"lr", blue, m.series("train", "lr"), false}}},
      {"Gradient norm", "before clipping", {{"grad_norm", blue, m.series("train", "grad_norm"), false}}},
      {"Throughput", "target tokens / s", {{"tokens_per_s", blue, m.series("train", "tokens_per_s"), false}}},
      {"Peak memory", "MiB", {{"peak_mem_mib", blue, m.series("train", "peak_mem_mib"), false}}},
      {"Held-out next-token accuracy", "%", {{"eval_token_acc", red, m.series("eval", "eval_token_acc", 100), true}}},
  };
  for (const auto& c : charts) h += "<figure>" + render_svg(c) + "</figure>";
  h += "</div>";
  if (m.bad_lines) h += "<p class=\"status\">" + std::to_string(m.bad_lines) + " line(s) of metrics.jsonl are not records and were skipped.</p>";

  // The run.
  h += "<h2>Run</h2><div class=\"two\"><table class=\"kv\">";
  Page p;
  if (has_cfg) {
    const std::string model_path = cfg_value("model", "path");
    std::string model = html_escape(model_path);
    try {
      if (!model_path.empty() && fs::is_regular_file(fs::path(model_path) / "config.json")) {
        const ModelConfig mc = parse_model_config(fs::path(model_path) / "config.json");
        model += "<br>" + html_escape(std::string(family_name(mc.family))) + ", " + std::to_string(mc.num_hidden_layers) + " layers, hidden " +
                 std::to_string(mc.hidden_size) + ", " + std::to_string(mc.num_attention_heads) + " heads (" +
                 std::to_string(mc.num_key_value_heads) + " kv), vocab " + count(mc.vocab_size);
      }
    } catch (const std::exception&) {
      // The model may have moved since; the path is still worth showing.
    }
    p.row("model", model);
    const bool quant = cfg_value("quantization", "enabled") == "true";
    p.row("base", quant ? html_escape(cfg_value("quantization", "quant_type")) + (cfg_value("quantization", "double_quant") == "true" ? " + double quant" : "") +
                              ", block " + html_escape(cfg_value("quantization", "blocksize"))
                        : "dense");
    p.row("LoRA", "r " + html_escape(cfg_value("lora", "r")) + ", alpha " + html_escape(cfg_value("lora", "alpha")) + ", dropout " +
                      html_escape(cfg_value("lora", "dropout")) + (cfg_value("lora", "rslora") == "true" ? ", rsLoRA" : "") + " on " +
                      html_escape(cfg_value("model", "target_modules")));
    p.row("data", html_escape(data_files(cfg)) + " (" + html_escape(cfg_value("data", "format")) + ", max_seq_len " +
                      html_escape(cfg_value("data", "max_seq_len")) + ")");
    p.row("steps", html_escape(cfg_value("training", "max_steps") == "0" ? cfg_value("training", "epochs") + " epoch(s)" : cfg_value("training", "max_steps")) +
                       " × " + html_escape(cfg_value("training", "gradient_accumulation")) + " × " + html_escape(cfg_value("training", "micro_batch_size")) +
                       " (steps × accumulation × micro-batch)");
    p.row("learning rate", html_escape(cfg_value("training", "learning_rate")) + ", " + html_escape(cfg_value("training", "schedule")) + ", warmup " +
                               html_escape(cfg_value("training", "warmup_steps")) + ", clip " + html_escape(cfg_value("training", "max_grad_norm")));
    p.row("optimizer", html_escape(cfg_value("optimizer", "name")) + " " + html_escape(cfg_value("optimizer", "bits")) + "-bit" +
                           (cfg_value("optimizer", "paged") == "true" ? ", paged" : ""));
  } else {
    p.row("recipe", cfg_problem.empty() ? "no config.yaml in the run directory" : html_escape(cfg_problem));
  }
  p.row("records", count(static_cast<int64_t>(train.size())) + " train, " + count(static_cast<int64_t>(evals.size())) + " eval");
  if (fs::is_directory(run_dir / "adapter")) p.row("adapter", html_escape((run_dir / "adapter").string()) + " (PEFT)");
  h += p.html + "</table><table class=\"kv\">";
  Page fin;
  for (const auto& [k, label] : std::vector<std::pair<std::string, std::string>>{
           {"loss", "train loss"}, {"lr", "learning rate"}, {"grad_norm", "gradient norm"}, {"tokens_per_s", "tokens / s"}})
    fin.row("final " + label, fmt(last_value(train, k), "%.5g"));
  if (!evals.empty()) {
    fin.row("held-out loss (first → last)", fmt(first_value(evals, "eval_loss"), "%.4f") + " → " + fmt(last_value(evals, "eval_loss"), "%.4f"));
    fin.row("held-out perplexity", fmt(first_value(evals, "eval_ppl"), "%.4g") + " → " + fmt(last_value(evals, "eval_ppl"), "%.4g"));
    fin.row("held-out accuracy", fmt(100 * first_value(evals, "eval_token_acc"), "%.2f") + "% → " + fmt(100 * last_value(evals, "eval_token_acc"), "%.2f") + "%");
  }
  h += fin.html + "</table></div>";

  // Data.
  if (fs::is_regular_file(run_dir / "data_report.json")) {
    std::ifstream in(run_dir / "data_report.json");
    const json d = json::parse(in, nullptr, /*allow_exceptions=*/false);
    h += "<h2>Data</h2>" + (d.is_object() ? data_section(d) : "<p>data_report.json does not parse.</p>");
  }

  // Exports.
  std::vector<fs::path> exports;
  for (const auto& e : fs::directory_iterator(run_dir))
    if (e.is_directory() && e.path().filename().string().rfind("export-", 0) == 0 && fs::is_regular_file(e.path() / "export_report.json"))
      exports.push_back(e.path());
  std::sort(exports.begin(), exports.end());
  if (!exports.empty()) {
    h += "<h2>Exports</h2>";
    for (const auto& e : exports) {
      std::ifstream in(e / "export_report.json");
      const json j = json::parse(in, nullptr, /*allow_exceptions=*/false);
      h += j.is_object() ? export_section(e, j) : "<h3>" + html_escape(e.filename().string()) + "</h3><p>export_report.json does not parse.</p>";
    }
  }

  if (!cfg_text.empty())
    h += "<h2>Recipe</h2><details><summary>config.yaml (every resolved setting)</summary><pre>" + html_escape(cfg_text) + "</pre></details>";
  h += "<footer>qtrain run report, generated " + local_time(std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count()) +
       " from " + html_escape(run_dir.string()) + ". TensorBoard: <code>tensorboard --logdir " +
       html_escape(run_dir.parent_path().empty() ? "." : run_dir.parent_path().string()) + "</code></footer>";
  return h + "</main></body></html>\n";
}

void write_run_report(const fs::path& run_dir, const fs::path& out) { write_file_atomic(out, run_report_html(run_dir)); }

std::string write_run_report_at_end(const fs::path& run_dir) {
  try {
    write_run_report(run_dir, run_dir / "report.html");
    return "  report: " + (run_dir / "report.html").string();
  } catch (const std::exception& e) {
    return "warning: report.html not written: " + std::string(e.what());
  }
}

}  // namespace qtrain
