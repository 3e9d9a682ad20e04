// TensorBoard event files for a run: `events.out.tfevents.<unix seconds>.<host>` in the run's
// output_dir (so `tensorboard --logdir runs/` shows one run per directory), TFRecord-framed Event
// protobufs (trainer/tfrecord.h, trainer/tensorboard_event.h), flushed after every event so a live
// TensorBoard sees each step as it is logged.
#pragma once

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

namespace qtrain {

class TensorBoardWriter {
 public:
  // resumed_at: the step a resumed run continues from. As metrics.jsonl (trainer/metrics_log.h), the
  // event files already in `dir` keep what belongs to steps up to it — scalars at steps <= resumed_at,
  // text before it (this run writes its own at resumed_at) — lose the rest and a torn last record, and
  // the newest one is appended to. nullopt: a new run; event files in `dir` (of a run that never
  // reached a checkpoint) are removed, as metrics.jsonl is started afresh.
  TensorBoardWriter(const std::filesystem::path& dir, std::optional<int64_t> resumed_at);

  void scalar(int64_t step, const std::string& tag, float value, double wall_time);
  void text(int64_t step, const std::string& tag, const std::string& markdown, double wall_time);

  const std::filesystem::path& path() const { return path_; }
  // Whether this writer started the file (a new run, or a resumed one that had none).
  bool created() const { return created_; }

 private:
  void append(const std::string& event);

  std::filesystem::path path_;
  std::ofstream out_;
  bool created_ = false;
};

// The event files of a run directory, oldest first (their names carry the creation time).
std::vector<std::filesystem::path> event_files(const std::filesystem::path& dir);

// Seconds since the Unix epoch: an Event's wall_time.
double unix_time_now();

}  // namespace qtrain
