// The run's console for batch jobs: --log-format json makes every line qtrain prints while training a
// JSON object (records as in metrics.jsonl, messages as {"kind": "message", "text"}), --quiet drops the
// per-step and per-evaluation lines and keeps the rest; metrics.jsonl is the same either way. Trains
// a quick-start model qtrain creates (no shared data needed).
#include <gtest/gtest.h>

#include <sstream>

#include <nlohmann/json.hpp>

#include "tests/cli_run.h"
#include "tests/scratch_dir.h"

namespace qtrain {
namespace {
namespace fs = std::filesystem;

TEST(TrainConsole, JsonLinesAndQuiet) {
  test_tools::ScratchDir tmp("train-console");
  const fs::path root = QTRAIN_SOURCE_DIR;
  const std::string args = "train " + (root / "recipes" / "quickstart.yaml").string() + " --set data.files=[" +
                           (root / "recipes" / "quickstart" / "train.jsonl").string() + "] --set model.path=" + (tmp.path / "base").string() +
                           " --set data.cache_dir=" + (tmp.path / "cache").string() +
                           " --set training.max_steps=2 --set training.micro_batch_size=1 --set data.max_seq_len=160"
                           " --set model.target_modules=[q_proj] --set lora.r=2 --set schedule.log_every=1 --set schedule.eval_batches=1";
  const auto json_run = test_tools::run_qtrain(args + " --set output_dir=" + (tmp.path / "json").string() + " --log-format json", true);
  ASSERT_EQ(json_run.code, 0) << json_run.err;
  std::istringstream in(json_run.err);
  int records = 0, messages = 0;
  for (std::string line; std::getline(in, line);) {
    const auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    ASSERT_TRUE(j.is_object() && j.contains("kind")) << "not a JSON log line: '" << line << "'\n" << json_run.err;
    (j["kind"] == "message" ? messages : records) += 1;
  }
  EXPECT_EQ(records, 2 + 2) << "2 steps, evaluations at 0 and 2:\n" << json_run.err;
  EXPECT_GE(messages, 3) << json_run.err;  // quick start, data report, set-up, checkpoint, summary
  EXPECT_NE(json_run.err.find("\"kind\": \"train\", \"step\": 2"), std::string::npos) << json_run.err;

  const auto quiet = test_tools::run_qtrain(args + " --set output_dir=" + (tmp.path / "quiet").string() + " --quiet", true);
  ASSERT_EQ(quiet.code, 0) << quiet.err;
  EXPECT_EQ(quiet.err.find("step 1/2"), std::string::npos) << quiet.err;
  EXPECT_EQ(quiet.err.find("eval @ step"), std::string::npos) << quiet.err;
  EXPECT_NE(quiet.err.find("done: 2 steps"), std::string::npos) << "the summary still prints:\n" << quiet.err;
  // Negative control: without either, the progress line is there.
  const auto plain = test_tools::run_qtrain(args + " --set output_dir=" + (tmp.path / "plain").string(), true);
  EXPECT_NE(plain.err.find("step 1/2"), std::string::npos) << plain.err;
  // A bad format is a usage error naming the key.
  const auto bad = test_tools::run_qtrain(args + " --set output_dir=" + (tmp.path / "bad").string() + " --log-format xml", true);
  EXPECT_EQ(bad.code, 2);
  EXPECT_NE(bad.err.find("logging.console"), std::string::npos) << bad.err;
}

}  // namespace
}  // namespace qtrain
