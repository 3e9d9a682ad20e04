// Progress for people and numbers for machines, on rank 0: a live line on a terminal (rewritten in
// place), plain lines otherwise, and every logged value in <run>/metrics.jsonl (with the wall time of
// the record, "time", in Unix seconds) and, when attached, in TensorBoard event files beside it.
#pragma once

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <map>
#include <optional>
#include <set>
#include <string>

#include "data/progress.h"

namespace qtrain {

class TensorBoardWriter;

class MetricsLog {
 public:
  // resumed_at: the step a resumed run continues from. Records after it (written by the run that
  // was interrupted, after its last checkpoint) are dropped so metrics.jsonl has each step once;
  // nullopt starts a new file.
  MetricsLog(const std::filesystem::path& jsonl, int64_t total_steps, bool enabled, std::optional<int64_t> resumed_at);
  ~MetricsLog();

  // TensorBoard event files in `dir` (trainer/tensorboard.h; resumed_at as above): from now on every
  // record's values go there too, as scalars tagged "<kind>/<name>" at the record's step and time; the
  // resolved recipe goes in now, as the text summary "recipe" at `step`. A resumed run without event
  // files (TensorBoard was off until now) gets the records it kept from metrics.jsonl first, so the
  // event file holds what metrics.jsonl holds either way.
  void add_tensorboard(const std::filesystem::path& dir, std::optional<int64_t> resumed_at, int64_t step,
                       const std::string& recipe_yaml);

  // What reaches the console (stderr); metrics.jsonl and TensorBoard get everything regardless.
  //   json:  every line a JSON object: records as their metrics.jsonl line, messages as
  //          {"kind": "message", "time": ..., "text": ...}; no live line.
  //   quiet: no line per record (the progress and evaluation lines); messages (set-up, checkpoints,
  //          warnings, the summary) still print.
  void set_console(ConsoleOptions c) { console_ = c; }
  // Ends the live step line (a newline), so a phase's own progress line starts on a fresh one.
  void end_live_line();

  // One record: {"kind": kind, "step": step, "time": unix seconds, ...values}; printed as a progress
  // line when kind == "train".
  void record(const std::string& kind, int64_t step, const std::map<std::string, double>& values);
  void message(const std::string& text);  // a plain line (ends the live line first)

  // Whether metrics.jsonl holds a record of `kind` at `step` (kept from before a resume, or written
  // since): a resumed run evaluates a step whose evaluation was interrupted, and none twice.
  bool has(const std::string& kind, int64_t step) const { return written_.count({kind, step}) > 0; }

 private:
  bool enabled_, tty_, live_ = false;
  int64_t total_;
  std::filesystem::path path_;
  std::ofstream out_;
  std::set<std::pair<std::string, int64_t>> written_;
  ConsoleOptions console_;
  std::string kept_;  // the records kept on resume, as metrics.jsonl lines
  std::unique_ptr<TensorBoardWriter> tensorboard_;
};

// A console message as MetricsLog::message prints it: `text` and a newline, or with json the line
// {"kind": "message", "time": ..., "text": text} (for lines printed before the log exists).
std::string console_line(bool json, const std::string& text);

// Peak resident memory of this process, in MiB (getrusage).
double peak_host_memory_mib();

}  // namespace qtrain
