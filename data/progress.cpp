#include "data/progress.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <iostream>

#include <nlohmann/json.hpp>

namespace qtrain {
namespace {

// A terminal line appears after a second and is redrawn at most 4 times a second; a log gets a line
// every 15 s (a 10-minute tokenization is 40 lines, a 3-second one none).
constexpr double kTtyFirst = 1.0, kTtyEvery = 0.25, kLogEvery = 15.0;

double steady_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double unix_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string duration(double s) {
  char b[32];
  s = std::clamp(s, 0.0, 1e8);  // a NaN or huge double converted to int is undefined
  const int64_t t = static_cast<int64_t>(std::llround(s));
  if (s < 60) std::snprintf(b, sizeof b, "%.1fs", s);
  else if (t < 3600) std::snprintf(b, sizeof b, "%lldm%02llds", static_cast<long long>(t / 60), static_cast<long long>(t % 60));
  else std::snprintf(b, sizeof b, "%lldh%02lldm", static_cast<long long>(t / 3600), static_cast<long long>(t / 60 % 60));
  return b;
}

std::string rate(double per_s) {
  char b[32];
  std::snprintf(b, sizeof b, per_s >= 100 ? "%.0f" : per_s >= 1 ? "%.1f" : "%.3f", per_s);
  return b;
}

}  // namespace

ProgressLine::ProgressLine(const ConsoleOptions& console, std::string what, int64_t total, std::string unit)
    : ProgressLine(console, std::move(what), total, std::move(unit), std::cerr, isatty(fileno(stderr)) != 0,
                   steady_seconds) {}

ProgressLine::ProgressLine(const ConsoleOptions& console, std::string what, int64_t total, std::string unit,
                           std::ostream& out, bool tty, std::function<double()> clock)
    : console_(console),
      what_(std::move(what)),
      unit_(std::move(unit)),
      total_(std::max<int64_t>(0, total)),
      out_(out),
      tty_(tty && !console.json),
      clock_(std::move(clock)),
      start_(clock_()) {}

ProgressLine::~ProgressLine() {
  if (live_) out_ << "\r\033[K" << std::flush;
}

void ProgressLine::update(int64_t done, const std::string& note) {
  update(done, [&note] { return note; });
}

void ProgressLine::update(int64_t done, const std::function<std::string()>& note) {
  done_ = done;
  if (console_.quiet || finished_) return;
  const double now = clock_() - start_;
  const bool due = tty_ ? now >= kTtyFirst && (last_draw_ < 0 || now - last_draw_ >= kTtyEvery)
                        : now - std::max(0.0, last_draw_) >= kLogEvery;
  if (!due) return;
  last_draw_ = now;
  draw(false, note());
}

void ProgressLine::finish(const std::string& note, bool transient) {
  if (finished_) return;
  finished_ = true;
  if (total_ > 0) done_ = std::max(done_, total_);
  if (console_.quiet || !shown_) return;
  if (transient) {
    if (live_) out_ << "\r\033[K" << std::flush;
    live_ = false;
    return;
  }
  draw(true, note);
}

void ProgressLine::draw(bool final, const std::string& note) {
  shown_ = true;
  if (console_.json) {
    const double elapsed = clock_() - start_;
    nlohmann::ordered_json j{{"kind", "progress"}, {"time", unix_seconds()}, {"phase", what_}, {"done", done_}};
    if (total_ > 0) j["total"] = total_;
    j["unit"] = unit_;
    j["elapsed_s"] = elapsed;
    if (!final && total_ > 0 && done_ > 0) j["eta_s"] = elapsed / static_cast<double>(done_) * static_cast<double>(total_ - done_);
    if (!note.empty()) j["note"] = note;
    out_ << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n" << std::flush;
    return;
  }
  const std::string line = text(final, note);
  if (tty_) {
    out_ << "\r\033[K" << line << (final ? "\n" : "") << std::flush;
    live_ = !final;
  } else {
    out_ << line << "\n" << std::flush;
  }
}

std::string ProgressLine::text(bool final, const std::string& note) const {
  const double elapsed = clock_() - start_;
  std::string s = what_ + ": ";
  if (final) {
    s += std::to_string(done_) + " " + unit_ + " in " + duration(elapsed);
  } else {
    s += std::to_string(done_);
    if (total_ > 0) {
      char pct[16];
      std::snprintf(pct, sizeof pct, " (%.0f%%)", 100.0 * static_cast<double>(done_) / static_cast<double>(total_));
      s += "/" + std::to_string(total_) + " " + unit_ + pct;
    } else {
      s += " " + unit_;
    }
    if (done_ > 0 && elapsed > 0) {
      const double per_s = static_cast<double>(done_) / elapsed;
      s += "  " + rate(per_s) + " " + unit_ + "/s";
      if (total_ > 0) s += "  eta " + duration(static_cast<double>(total_ - done_) / per_s);
    }
  }
  if (!note.empty()) s += "  " + note;
  return s;
}

}  // namespace qtrain
