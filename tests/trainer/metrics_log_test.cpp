// metrics.jsonl: every line parses as JSON, with kind and step first and the values by name; NaN and
// Inf become null; a key that needs escaping is escaped; numbers keep every bit.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>

#include <nlohmann/json.hpp>

#include "trainer/metrics_log.h"

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
  EXPECT_EQ(j[2].size(), 2u);
  // The separators people and scripts have been reading all along.
  EXPECT_EQ(lines[2], "{\"kind\": \"train\", \"step\": 3}");
  fs::remove(p);
}

}  // namespace
}  // namespace qtrain
