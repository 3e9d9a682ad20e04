#include "trainer/tensorboard.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <stdexcept>

#include "data/error.h"
#include "data/io/atomic_file.h"
#include "trainer/tensorboard_event.h"
#include "trainer/tfrecord.h"

namespace qtrain {
namespace fs = std::filesystem;
namespace {

constexpr const char* kPrefix = "events.out.tfevents.";

// Rewrites `file` with the events a run resumed at `step` keeps; untouched when it keeps them all
// (a live TensorBoard reading it then sees no change under its feet).
void trim_for_resume(const fs::path& file, int64_t step) {
  const TfRecords recs = read_tfrecords(file);
  std::string kept;
  bool dropped = recs.torn_tail;
  for (size_t i = 0; i < recs.records.size(); ++i) {
    EventInfo e;
    try {
      e = decode_event(recs.records[i]);
    } catch (const std::runtime_error& err) {
      throw InputError(file.string() + ": record " + std::to_string(i) + " is not an Event protobuf (" + err.what() +
                       "); move the file aside");
    }
    const bool keep = e.file_version || e.step < step || (e.step == step && e.scalars_only);
    if (keep) kept += tfrecord_frame(recs.records[i]);
    else dropped = true;
  }
  if (dropped) write_file_atomic(file, kept);
}

std::string host_name() {
  char buf[256] = {};
  if (gethostname(buf, sizeof buf - 1) != 0 || buf[0] == '\0') return "localhost";
  std::string h = buf;
  std::replace(h.begin(), h.end(), '/', '_');
  return h;
}

}  // namespace

double unix_time_now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::vector<fs::path> event_files(const fs::path& dir) {
  std::vector<fs::path> out;
  if (!fs::is_directory(dir)) return out;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    // A temporary left by a crash (write_file_atomic's `<target>.tmp.<pid>.<random>`) is not an event file.
    if (e.is_regular_file() && name.rfind(kPrefix, 0) == 0 && name.find(".tmp.") == std::string::npos) out.push_back(e.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

TensorBoardWriter::TensorBoardWriter(const fs::path& dir, std::optional<int64_t> resumed_at) {
  const auto existing = event_files(dir);
  if (resumed_at && !existing.empty()) {
    for (const auto& f : existing) trim_for_resume(f, *resumed_at);
    path_ = existing.back();
    out_.open(path_, std::ios::binary | std::ios::app);
  } else {
    for (const auto& f : existing) fs::remove(f);
    const double now = unix_time_now();
    path_ = dir / (kPrefix + std::to_string(static_cast<int64_t>(now)) + "." + host_name());
    out_.open(path_, std::ios::binary | std::ios::trunc);
    created_ = true;
    if (out_) append(file_version_event(now));
  }
  if (!out_) throw std::runtime_error(path_.string() + ": cannot open the TensorBoard event file for writing");
}

void TensorBoardWriter::append(const std::string& event) {
  out_ << tfrecord_frame(event);
  out_.flush();
  if (!out_) throw std::runtime_error(path_.string() + ": cannot append an event (disk full?)");
}

void TensorBoardWriter::scalar(int64_t step, const std::string& tag, float value, double wall_time) {
  append(scalar_event(wall_time, step, tag, value));
}

void TensorBoardWriter::text(int64_t step, const std::string& tag, const std::string& markdown, double wall_time) {
  append(text_event(wall_time, step, tag, markdown));
}

}  // namespace qtrain
