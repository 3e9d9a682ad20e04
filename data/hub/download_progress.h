// Progress of a snapshot download on stderr: one line per file (bytes, rate) and the overall total.
// On a terminal the line is rewritten in place (\r) at most 10 times a second; otherwise (a job log) a
// plain line every 10 s while a file downloads and one when it ends, so logs stay short and still show a stalled transfer.
#pragma once

#include <chrono>
#include <cstdint>
#include <ostream>
#include <string>

namespace qtrain::hub {

class DownloadProgress {
 public:
  // total_bytes / total_files: what this snapshot still has to download (0 when all is cached).
  DownloadProgress(std::ostream& out, bool terminal, int64_t total_bytes, int total_files);

  void start_file(const std::string& name, int64_t size, int64_t resumed_from);
  void advance(int64_t bytes);        // bytes arrived for the current file
  void restart_file();                // the server ignored the range: the file starts again at 0
  void end_file();                    // the file is complete (verified)
  void note(const std::string& line);  // a message between progress lines ("resuming at ...")

 private:
  using Clock = std::chrono::steady_clock;
  void print(bool final);

  std::ostream& out_;
  bool terminal_;
  int64_t total_bytes_;
  int total_files_;
  int file_index_ = 0;
  int64_t done_before_ = 0;  // bytes of finished files (and the resumed part of the current one)
  std::string name_;
  int64_t size_ = 0, got_ = 0, session_bytes_ = 0;
  Clock::time_point file_t0_, last_print_;
  bool line_open_ = false;
};

// "1.2 GB", "340.0 MB", "512 B": decimal units, as the Hub's web pages show sizes.
std::string human_bytes(int64_t bytes);

}  // namespace qtrain::hub
