// The progress line of long phases (data/progress.h), on a fake clock: what a terminal, a log file,
// --log-format json and --quiet see, the rate and ETA, and that a short phase prints nothing.
#include <gtest/gtest.h>

#include <sstream>

#include <nlohmann/json.hpp>

#include "data/progress.h"

namespace qtrain {
namespace {

struct Fixture {
  std::ostringstream out;
  double t = 0;
  ProgressLine make(ConsoleOptions c, bool tty, int64_t total = 100) {
    return ProgressLine(c, "tokenizing train.jsonl", total, "examples", out, tty, [this] { return t; });
  }
};

TEST(ProgressLine, ShortPhasePrintsNothing) {
  for (bool tty : {false, true}) {
    Fixture f;
    auto p = f.make({}, tty);
    f.t = 0.9;
    p.update(50);
    f.t = 0.95;
    p.update(100);
    p.finish();
    EXPECT_EQ(f.out.str(), "") << "tty " << tty;
  }
}

TEST(ProgressLine, TerminalRewritesOneLineWithRateAndEta) {
  Fixture f;
  auto p = f.make({}, /*tty=*/true);
  f.t = 2;
  p.update(25);  // 12.5 examples/s, 75 left: 6 s
  EXPECT_EQ(f.out.str(), "\r\033[Ktokenizing train.jsonl: 25/100 examples (25%)  12.5 examples/s  eta 6.0s");
  f.t = 2.1;
  p.update(26);  // within 0.25 s of the last draw: not redrawn
  EXPECT_EQ(f.out.str().find("26/100"), std::string::npos);
  f.t = 4;
  p.update(50, "ppl 3.25");
  EXPECT_NE(f.out.str().find("\r\033[Ktokenizing train.jsonl: 50/100 examples (50%)  12.5 examples/s  eta 4.0s  ppl 3.25"),
            std::string::npos);
  f.t = 130;
  p.update(99);
  f.t = 131;
  p.finish();
  const std::string s = f.out.str();
  EXPECT_EQ(s.substr(s.rfind('\r')), "\r\033[Ktokenizing train.jsonl: 100 examples in 2m11s\n");
}

// A lazy note (a running loss read from the GPU costs a sync) is made only for the lines drawn.
TEST(ProgressLine, LazyNoteIsReadOnlyWhenALineIsDrawn) {
  Fixture f;
  auto p = f.make({}, /*tty=*/true);
  int reads = 0;
  auto note = [&reads] { return "ppl " + std::to_string(++reads); };
  for (int i = 1; i <= 100; ++i) {
    f.t = 0.02 * i;  // 2 s in all: drawn from 1 s on, at most every 0.25 s
    p.update(i, note);
  }
  EXPECT_GE(reads, 3);
  EXPECT_LE(reads, 5) << "the note was made for updates that drew nothing";
  EXPECT_NE(f.out.str().find("ppl " + std::to_string(reads)), std::string::npos);
  auto quiet = f.make({.json = false, .quiet = true}, /*tty=*/true);
  f.t = 100;
  quiet.update(50, note);
  EXPECT_LE(reads, 5) << "--quiet made the note";
}

TEST(ProgressLine, LogFileGetsALineEvery15Seconds) {
  Fixture f;
  auto p = f.make({}, /*tty=*/false, /*total=*/1000);
  int lines = 0;
  for (int i = 1; i <= 1000; ++i) {
    f.t = i * 0.1;  // 100 s in all
    p.update(i);
  }
  p.finish();
  std::istringstream in(f.out.str());
  for (std::string line; std::getline(in, line);) ++lines;
  EXPECT_EQ(lines, 6 + 1) << f.out.str();  // at 15, 30, ... 90 s, then the closing line
  EXPECT_EQ(f.out.str().find('\r'), std::string::npos) << "no carriage returns in a log file";
  EXPECT_NE(f.out.str().find("tokenizing train.jsonl: 150/1000 examples (15%)  10.0 examples/s  eta 1m25s\n"), std::string::npos);
  EXPECT_NE(f.out.str().find("tokenizing train.jsonl: 1000 examples in 1m40s\n"), std::string::npos);
}

TEST(ProgressLine, JsonLinesAreObjects) {
  Fixture f;
  auto p = f.make({.json = true}, /*tty=*/true);  // json never draws a live line, even on a terminal
  f.t = 20;
  p.update(40);
  f.t = 50;
  p.finish();
  std::istringstream in(f.out.str());
  std::string a, b, extra;
  ASSERT_TRUE(std::getline(in, a) && std::getline(in, b));
  EXPECT_FALSE(std::getline(in, extra));
  const auto ja = nlohmann::json::parse(a), jb = nlohmann::json::parse(b);
  EXPECT_EQ(ja["kind"], "progress");
  EXPECT_EQ(ja["phase"], "tokenizing train.jsonl");
  EXPECT_EQ(ja["done"], 40);
  EXPECT_EQ(ja["total"], 100);
  EXPECT_DOUBLE_EQ(ja["eta_s"].get<double>(), 30.0);
  EXPECT_TRUE(ja["time"].is_number());
  EXPECT_EQ(jb["done"], 100);
  EXPECT_FALSE(jb.contains("eta_s"));
  EXPECT_DOUBLE_EQ(jb["elapsed_s"].get<double>(), 50.0);
}

TEST(ProgressLine, QuietPrintsNothingAndUnknownTotalHasNoEta) {
  Fixture f;
  {
    auto p = f.make({.quiet = true}, true);
    f.t = 100;
    p.update(50);
    p.finish();
  }
  EXPECT_EQ(f.out.str(), "");
  auto p = f.make({}, true, /*total=*/0);
  f.t = 102;
  p.update(7);
  EXPECT_EQ(f.out.str(), "\r\033[Ktokenizing train.jsonl: 7 examples  3.5 examples/s");
}

TEST(ProgressLine, UnwindingErasesTheLiveLineAndTransientFinishLeavesNothing) {
  Fixture f;
  {
    auto p = f.make({}, true);
    f.t = 2;
    p.update(10);
  }  // no finish: an exception would unwind like this
  EXPECT_EQ(f.out.str().substr(f.out.str().size() - 4), "\r\033[K");
  Fixture g;
  auto p = g.make({}, true);
  g.t = 2;
  p.update(10);
  p.finish("", /*transient=*/true);
  EXPECT_EQ(g.out.str().substr(g.out.str().size() - 4), "\r\033[K");
  EXPECT_EQ(g.out.str().find('\n'), std::string::npos);
}

}  // namespace
}  // namespace qtrain
