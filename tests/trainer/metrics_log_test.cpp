// metrics.jsonl: every line parses as JSON, with kind and step first and the values by name; NaN and
// Inf become null; a key that needs escaping is escaped; numbers keep every bit; each record carries its
// wall time.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>

#include <nlohmann/json.hpp>

#include "trainer/metrics_log.h"
#include "trainer/tensorboard.h"

namespace qtrain {
namespace {
namespace fs = std::filesystem;

std::vector<std::string> lines_of(const fs::path& p) {
  std::ifstream in(p);
  std::vector<std::string> out;
  for (std::string line; std::getline(in, line);) out.push_back(line);
  return out;
}

TEST(MetricsLog, LinesAreJsonWithNullForNonFinite) {
  const fs::path p = fs::temp_directory_path() / ("qtrain-metrics-" + std::to_string(std::random_device{}()) + ".jsonl");
  const double lr = 2e-4 / 3;  // no short decimal form: it must survive with every digit
  {
    MetricsLog log(p, 10, true, {});  // a new file
    log.record("train", 1, {{"loss", 2.5}, {"lr", lr}, {"grad_norm", std::nan("")}});
    log.record("eval", 2, {{"loss", std::numeric_limits<double>::infinity()}, {"odd \"key\"\n", -1.0}});
    log.record("train", 3, {});
  }
  const auto lines = lines_of(p);
  ASSERT_EQ(lines.size(), 3u);
  std::vector<nlohmann::ordered_json> j;
  for (const auto& l : lines) {
    auto parsed = nlohmann::ordered_json::parse(l, nullptr, /*allow_exceptions=*/false);
    ASSERT_FALSE(parsed.is_discarded()) << "not JSON: " << l;
    j.push_back(parsed);
  }
  EXPECT_EQ(j[0]["kind"], "train");
  EXPECT_EQ(j[0]["step"], 1);
  EXPECT_EQ(j[0]["loss"].get<double>(), 2.5);
  EXPECT_EQ(j[0]["lr"].get<double>(), lr);
  EXPECT_TRUE(j[0]["grad_norm"].is_null()) << lines[0];
  EXPECT_EQ(j[0].begin().key(), "kind");
  EXPECT_EQ(std::next(j[0].begin()).key(), "step");
  EXPECT_TRUE(j[1]["loss"].is_null()) << lines[1];
  EXPECT_EQ(j[1]["odd \"key\"\n"].get<double>(), -1.0) << lines[1];
  EXPECT_EQ(std::next(j[0].begin(), 2).key(), "time");
  EXPECT_EQ(j[2].size(), 3u);
  // The record's wall time: Unix seconds, within the test's own run.
  EXPECT_GT(j[2]["time"].get<double>(), 1.7e9);
  EXPECT_LE(j[2]["time"].get<double>(), unix_time_now());
  // The separators people and scripts have been reading all along.
  EXPECT_EQ(lines[2], "{\"kind\": \"train\", \"step\": 3, \"time\": " + j[2]["time"].dump() + "}");
  fs::remove(p);
}

// A resumed run keeps the records up to its checkpoint's step, drops later ones and a torn last line
// (the interrupted process was killed mid-write), remembers what it kept, and appends after it.
TEST(MetricsLog, ResumeKeepsRecordsUpToTheCheckpointAndDropsATornLine) {
  const fs::path p = fs::temp_directory_path() / ("qtrain-metrics-" + std::to_string(std::random_device{}()) + ".jsonl");
  {
    MetricsLog log(p, 10, true, {});
    log.record("eval", 0, {{"eval_loss", 3.0}});
    for (int s = 1; s <= 6; ++s) log.record("train", s, {{"loss", 1.0 / s}});
    log.record("eval", 4, {{"eval_loss", 2.0}});
  }
  { std::ofstream(p, std::ios::app) << "{\"kind\": \"train\", \"st"; }  // torn
  {
    MetricsLog log(p, 10, true, 4);
    EXPECT_TRUE(log.has("eval", 0));
    EXPECT_TRUE(log.has("train", 4));
    EXPECT_TRUE(log.has("eval", 4)) << "step 4's evaluation came before its checkpoint";
    EXPECT_FALSE(log.has("train", 5));
    EXPECT_FALSE(log.has("eval", 8));
    log.record("train", 5, {{"loss", 0.5}});
    EXPECT_TRUE(log.has("train", 5));
  }
  std::vector<std::pair<std::string, int64_t>> got;
  for (const auto& l : lines_of(p)) {
    const auto j = nlohmann::json::parse(l);  // every line parses: the torn one is gone
    got.emplace_back(j["kind"].get<std::string>(), j["step"].get<int64_t>());
  }
  const std::vector<std::pair<std::string, int64_t>> want = {{"eval", 0}, {"train", 1}, {"train", 2}, {"train", 3},
                                                              {"train", 4}, {"eval", 4}, {"train", 5}};
  EXPECT_EQ(got, want);
  fs::remove(p);
}

}  // namespace
}  // namespace qtrain
