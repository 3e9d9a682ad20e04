#include "trainer/metrics_log.h"

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <iostream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "data/io/atomic_file.h"
#include "trainer/tensorboard.h"

namespace qtrain {

MetricsLog::MetricsLog(const std::filesystem::path& jsonl, int64_t total_steps, bool enabled, std::optional<int64_t> resumed_at)
    : enabled_(enabled), tty_(isatty(fileno(stderr)) != 0), total_(total_steps), path_(jsonl) {
  if (!enabled_) return;
  if (resumed_at && std::filesystem::exists(jsonl)) {
    // Keep the records up to the checkpoint; a torn last line (the process was killed mid-write)
    // does not parse and goes too. Rewritten atomically, so a crash here loses nothing.
    std::ifstream in(jsonl);
    std::string kept;
    for (std::string line; std::getline(in, line);) {
      const auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
      if (j.is_object() && j.contains("step") && j["step"].is_number_integer() && j["step"].get<int64_t>() <= *resumed_at) {
        kept += line + "\n";
        if (j.contains("kind") && j["kind"].is_string()) written_.insert({j["kind"].get<std::string>(), j["step"].get<int64_t>()});
      }
    }
    write_file_atomic(jsonl, kept);
    kept_ = std::move(kept);
  }
  out_.open(jsonl, resumed_at ? std::ios::app : std::ios::trunc);
  if (!out_) throw std::runtime_error(jsonl.string() + ": cannot open for writing");
}

MetricsLog::~MetricsLog() {
  if (live_) std::cerr << "\n";
}

void MetricsLog::add_tensorboard(const std::filesystem::path& dir, std::optional<int64_t> resumed_at, int64_t step,
                                 const std::string& recipe_yaml) {
  if (!enabled_) return;
  tensorboard_ = std::make_unique<TensorBoardWriter>(dir, resumed_at);
  if (resumed_at && tensorboard_->created()) {
    std::istringstream in(kept_);
    for (std::string line; std::getline(in, line);) {
      const auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
      if (!j.is_object() || !j.contains("kind") || !j["kind"].is_string()) continue;
      const std::string kind = j["kind"].get<std::string>();
      const int64_t step = j["step"].get<int64_t>();
      const double time = j.contains("time") && j["time"].is_number() ? j["time"].get<double>() : unix_time_now();
      for (const auto& [k, v] : j.items())
        if (k != "kind" && k != "step" && k != "time" && (v.is_number() || v.is_null()))
          tensorboard_->scalar(step, kind + "/" + k, v.is_null() ? NAN : v.get<float>(), time);
    }
  }
  // Indented four spaces: a Markdown code block, so the text plugin shows the YAML as written.
  std::string md;
  std::istringstream in(recipe_yaml);
  for (std::string line; std::getline(in, line);) md += "    " + line + "\n";
  tensorboard_->text(step, "recipe", md, unix_time_now());
}

void MetricsLog::record(const std::string& kind, int64_t step, const std::map<std::string, double>& values) {
  if (!enabled_) return;
  nlohmann::ordered_json j;  // kind, step, time, then the values in name order
  j["kind"] = kind;
  j["step"] = step;
  const double now = unix_time_now();
  j["time"] = now;
  for (const auto& [k, v] : values) j[k] = std::isfinite(v) ? nlohmann::ordered_json(v) : nullptr;  // JSON has no NaN
  // Every key and value is nlohmann's (escaping, shortest round-trip numbers); only the separators are
  // ours: ", " and ": " as Python's json.dumps writes them, so a line reads the same as before to a
  // person or a grep for "kind": "train".
  std::string text = "{";
  for (const auto& e : j.items())
    text += (text.size() > 1 ? ", " : "") + nlohmann::json(e.key()).dump() + ": " + e.value().dump();
  out_ << text << "}\n";
  out_.flush();
  // A record that did not reach the file (a full disk) is a failure, not a silent gap in the log.
  if (!out_) throw std::runtime_error(path_.string() + ": cannot append a record (disk full?)");
  written_.insert({kind, step});
  if (tensorboard_)
    for (const auto& [k, v] : values) tensorboard_->scalar(step, kind + "/" + k, static_cast<float>(v), now);

  if (console_.quiet) return;
  if (console_.json) {
    std::cerr << text << "}\n";
    return;
  }
  auto get = [&](const char* k) { auto it = values.find(k); return it == values.end() ? NAN : it->second; };
  char line[256];
  if (kind == "train") {
    // Converting a NaN or huge double to int is undefined: an unknown eta prints as 0m00s.
    const double eta = std::isfinite(get("eta_s")) ? std::clamp(get("eta_s"), 0.0, 1e8) : 0.0;
    std::snprintf(line, sizeof line, "step %lld/%lld  loss %.4f  lr %.3g  grad %.3f  %.0f tok/s  mem %.0f MiB  eta %dm%02ds",
                  static_cast<long long>(step), static_cast<long long>(total_), get("loss"), get("lr"), get("grad_norm"),
                  get("tokens_per_s"), get("peak_mem_mib"), static_cast<int>(eta / 60), static_cast<int>(std::fmod(eta, 60)));
    if (tty_) {
      std::cerr << "\r\033[K" << line << std::flush;
      live_ = true;
    } else {
      std::cerr << line << "\n";
    }
  } else {
    std::string s = kind + " @ step " + std::to_string(step) + ":";
    for (const auto& [k, v] : values) {
      char b[64];
      std::snprintf(b, sizeof b, " %s %.4g", k.c_str(), v);
      s += b;
    }
    message(s);
  }
}

void MetricsLog::message(const std::string& text) {
  if (!enabled_) return;
  if (console_.json) {
    std::cerr << console_line(true, text);
    return;
  }
  end_live_line();
  std::cerr << text << "\n";
}

void MetricsLog::end_live_line() {
  if (live_) std::cerr << "\n";
  live_ = false;
}

std::string console_line(bool json, const std::string& text) {
  if (!json) return text.empty() || text.back() != '\n' ? text + "\n" : text;
  std::string t = text;
  while (!t.empty() && t.back() == '\n') t.pop_back();
  const nlohmann::ordered_json j{{"kind", "message"}, {"time", unix_time_now()}, {"text", t}};
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
}

double peak_host_memory_mib() {
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<double>(ru.ru_maxrss) / 1024.0;  // Linux reports KiB
}

}  // namespace qtrain
