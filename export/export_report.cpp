#include "export/export_report.h"

#include <cmath>
#include <cstdio>
#include <sstream>

namespace qtrain {
namespace {

std::string fixed(double v, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}
std::string sci(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.3e", v);
  return buf;
}
std::string mib(uint64_t bytes) { return fixed(static_cast<double>(bytes) / (1 << 20), 2) + " MiB"; }

}  // namespace

nlohmann::ordered_json report_json(const ExportReport& r) {
  nlohmann::ordered_json j;
  j["format"] = r.format;
  j["out"] = r.out.string();
  j["model"] = r.model_dir.string();
  j["adapter"] = r.adapter_dir.empty() ? nlohmann::ordered_json() : nlohmann::ordered_json(r.adapter_dir.string());
  j["settings"] = r.settings;
  j["calibration"] = {{"source", r.calib_source}, {"samples", r.calib_samples}, {"tokens", r.calib_tokens}};
  j["evaluation"] = {{"text", r.eval_text.empty() ? nlohmann::ordered_json() : nlohmann::ordered_json(r.eval_text)},
                     {"windows", r.eval_windows}, {"seq_len", r.eval_len}, {"heldout_examples", r.heldout_examples},
                     {"protocol", "export/perplexity.h: non-overlapping windows, every token but each window's first scored; "
                                  "KL(merged || model) per scored token; held-out: mean NLL of the trained tokens"}};
  j["size"] = {{"bytes_on_disk", r.bytes_on_disk}, {"bf16_bytes", r.bf16_bytes},
               {"ratio_to_bf16", r.bf16_bytes ? static_cast<double>(r.bytes_on_disk) / r.bf16_bytes : 0.0}};
  auto& models = j["models"] = nlohmann::ordered_json::array();
  for (const auto& m : r.models) {
    nlohmann::ordered_json e{{"name", m.name}};
    if (m.text) e["text"] = {{"ppl", m.text->ppl}, {"nll", m.text->nll}, {"kl", m.text->kl}, {"tokens", m.text->tokens}};
    if (m.heldout_nll) e["heldout"] = {{"nll", *m.heldout_nll}, {"ppl", std::exp(*m.heldout_nll)}};
    if (m.bytes) e["bytes"] = *m.bytes;
    models.push_back(e);
  }
  auto& merges = j["merge"] = nlohmann::ordered_json::array();
  for (const auto& m : r.merges)
    merges.push_back({{"name", m.name}, {"weight_norm", m.weight_norm}, {"delta_norm", m.delta_norm}, {"ratio", m.ratio()}});
  auto& layers = j["layers"] = nlohmann::ordered_json::array();
  for (const auto& l : r.linears)
    layers.push_back({{"name", l.name}, {"error", l.error}, {"rtn_error", l.rtn_error}, {"damp", l.damp}, {"tokens", l.tokens}});
  auto& phases = j["seconds"] = nlohmann::ordered_json::object();
  for (const auto& [name, s] : r.phases) phases[name] = s;
  return j;
}

std::string report_markdown(const ExportReport& r) {
  std::ostringstream md;
  md << "# Export report: " << r.format << "\n\n"
     << "- output: `" << r.out.string() << "`\n- base: `" << r.model_dir.string() << "`\n";
  if (!r.adapter_dir.empty()) md << "- adapter: `" << r.adapter_dir.string() << "`\n";
  md << "- settings: `" << r.settings.dump() << "`\n";
  if (r.calib_samples) md << "- calibration: " << r.calib_samples << " sequences, " << r.calib_tokens << " tokens, from " << r.calib_source << "\n";
  md << "- size on disk: " << mib(r.bytes_on_disk) << " (" << fixed(r.bf16_bytes ? 100.0 * r.bytes_on_disk / r.bf16_bytes : 0, 1)
     << "% of bf16, " << mib(r.bf16_bytes) << ")\n\n";

  md << "## Quality\n\n";
  if (!r.eval_text.empty())
    md << "Text: `" << r.eval_text << "`, " << r.eval_windows << " non-overlapping windows of " << r.eval_len
       << " tokens (perplexity.h). KL: mean per-token KL(merged ‖ model), nats.\n";
  if (r.heldout_examples) md << "Held-out: the run's " << r.heldout_examples << " held-out examples, NLL of their trained tokens.\n";
  md << "\n| model | text ppl | KL vs merged | held-out ppl | size |\n|---|---|---|---|---|\n";
  for (const auto& m : r.models) {
    md << "| " << m.name << " | " << (m.text ? fixed(m.text->ppl, 4) : "—") << " | "
       << (m.text && m.text->kl >= 0 ? sci(m.text->kl) : "—") << " | "
       << (m.heldout_nll ? fixed(std::exp(*m.heldout_nll), 4) : "—") << " | " << (m.bytes ? mib(*m.bytes) : "—") << " |\n";
  }
  if (!r.linears.empty()) {
    md << "\n## Per-layer quantization error\n\ntrace((W−Q)·H·(W−Q)ᵀ) on the calibration activations (H = 2/n·Σxxᵀ); "
          "RTN is round-to-nearest on the same grid.\n\n| linear | error | RTN error | error / RTN | damp |\n|---|---|---|---|---|\n";
    for (const auto& l : r.linears)
      md << "| " << l.name << " | " << sci(l.error) << " | " << sci(l.rtn_error) << " | "
         << (l.rtn_error > 0 ? fixed(l.error / l.rtn_error, 3) : "—") << " | " << fixed(l.damp, 3) << " |\n";
  }
  if (!r.merges.empty()) {
    md << "\n## Merge\n\n‖s·B·A‖ / ‖deq(W)‖ per adapted linear.\n\n| linear | ratio |\n|---|---|\n";
    for (const auto& m : r.merges) md << "| " << m.name << " | " << sci(m.ratio()) << " |\n";
  }
  md << "\n## Wall time\n\n| phase | seconds |\n|---|---|\n";
  for (const auto& [name, s] : r.phases) md << "| " << name << " | " << fixed(s, 2) << " |\n";
  return md.str();
}

}  // namespace qtrain
