#include "data/hub/download_progress.h"

#include <cstdio>

namespace qtrain::hub {

std::string human_bytes(int64_t b) {
  const char* units[] = {"B", "kB", "MB", "GB", "TB"};
  double v = static_cast<double>(b);
  int u = 0;
  while (v >= 1000 && u < 4) v /= 1000, ++u;
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.1f %s", v, units[u]);
  return buf;
}

DownloadProgress::DownloadProgress(std::ostream& out, bool terminal, int64_t total_bytes, int total_files)
    : out_(out), terminal_(terminal), total_bytes_(total_bytes), total_files_(total_files) {}

void DownloadProgress::start_file(const std::string& name, int64_t size, int64_t resumed_from) {
  ++file_index_;
  name_ = name, size_ = size, got_ = resumed_from, session_bytes_ = 0;
  done_before_ += resumed_from;
  file_t0_ = last_print_ = Clock::now();
  if (terminal_) print(false);  // a log gets the file's line when it ends (or every 10 s if it is slow)
}

void DownloadProgress::advance(int64_t bytes) {
  got_ += bytes, session_bytes_ += bytes;
  const auto now = Clock::now();
  const auto every = terminal_ ? std::chrono::milliseconds(100) : std::chrono::milliseconds(10000);
  if (now - last_print_ >= every) {
    last_print_ = now;
    print(false);
  }
}

void DownloadProgress::restart_file() {
  done_before_ -= got_ - session_bytes_;
  got_ = 0, session_bytes_ = 0;
}

void DownloadProgress::end_file() {
  print(true);
  done_before_ += session_bytes_;
}

void DownloadProgress::note(const std::string& line) {
  if (line_open_) out_ << "\n";
  line_open_ = false;
  out_ << "[hub] " << line << "\n" << std::flush;
}

void DownloadProgress::print(bool final) {
  const double secs = std::chrono::duration<double>(Clock::now() - file_t0_).count();
  const double rate = secs > 0 ? session_bytes_ / secs : 0;
  char pct[16] = "";
  if (size_ > 0) std::snprintf(pct, sizeof pct, " %3.0f%%", 100.0 * got_ / size_);
  std::string line = "[hub] " + name_ + pct + " " + human_bytes(got_) + " / " + human_bytes(size_) + " at " +
                     human_bytes(static_cast<int64_t>(rate)) + "/s" + "  (file " + std::to_string(file_index_) + "/" +
                     std::to_string(total_files_) + ", " + human_bytes(done_before_ + session_bytes_) + " / " +
                     human_bytes(total_bytes_) + " in all)";
  if (final) line += " done";
  if (terminal_) {
    out_ << "\r" << line << "\033[K";  // erase what a longer previous line left
    line_open_ = !final;
    if (final) out_ << "\n";
    out_ << std::flush;
  } else {
    out_ << line << "\n" << std::flush;
  }
}

}  // namespace qtrain::hub
