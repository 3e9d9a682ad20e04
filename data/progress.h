// How a long phase shows how far it is: tokenizing a dataset, loading (and quantizing) a base model,
// evaluating, quantizing an export layer by layer. Like the training step line: on a terminal one line
// rewritten in place with the rate and an ETA; in a log file (stderr not a terminal) a line every
// 15 s; with --log-format json a {"kind": "progress", ...} object at the same cadence; nothing with
// --quiet. A phase that ends within a second (a terminal) or 15 s (a log) prints nothing at all, so
// short runs and tests stay as quiet as before; one that showed progress ends with a line saying what
// it did and how long it took.
#pragma once

#include <cstdint>
#include <functional>
#include <iosfwd>
#include <string>

namespace qtrain {

// What the console of a run or a verb shows (recipe logging.console / logging.quiet, --log-format,
// --quiet). Everything written to files (metrics.jsonl, TensorBoard) is the same either way.
struct ConsoleOptions {
  bool json = false;   // every console line a JSON object
  bool quiet = false;  // no progress or per-record lines; messages still print
};

class ProgressLine {
 public:
  // `what` names the phase ("tokenizing data/train.jsonl"); `total` units of `unit` ("examples");
  // total 0 means unknown (no percentage, no ETA).
  ProgressLine(const ConsoleOptions& console, std::string what, int64_t total, std::string unit);
  // The same on `out`, as a terminal or not, with `clock` giving seconds (tests drive time).
  ProgressLine(const ConsoleOptions& console, std::string what, int64_t total, std::string unit, std::ostream& out,
               bool tty, std::function<double()> clock);
  ProgressLine(const ProgressLine&) = delete;
  ProgressLine& operator=(const ProgressLine&) = delete;
  // Without finish() (an exception unwinds the phase) a live line is erased, so the error reads cleanly.
  ~ProgressLine();

  // `done` units so far (absolute); `note` is appended ("ppl 12.31").
  void update(int64_t done, const std::string& note = "");
  // The same with a note made only when a line is drawn: reading it may cost a device synchronisation
  // (a running loss on the GPU), which a throttled line should not pay after every batch.
  void update(int64_t done, const std::function<std::string()>& note);
  // The phase is over: the closing line, when anything was shown. `transient`: erase instead (a phase
  // inside another that reports the result itself, such as evaluation during training).
  void finish(const std::string& note = "", bool transient = false);

 private:
  void draw(bool final, const std::string& note);
  std::string text(bool final, const std::string& note) const;

  ConsoleOptions console_;
  std::string what_, unit_;
  int64_t total_, done_ = 0;
  std::ostream& out_;
  bool tty_;
  std::function<double()> clock_;
  double start_, last_draw_ = -1;
  bool shown_ = false, live_ = false, finished_ = false;
};

}  // namespace qtrain
