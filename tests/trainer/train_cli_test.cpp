// The loop's policies through the CLI (issue 8, defect 11): `on_nan: skip` and `stop`, keep-last-K,
// refusing to resume an older checkpoint while newer ones exist, and both spellings of
// `--resume DIR`. Each test trains a quick-start model that qtrain creates (no shared data needed).
#include <gtest/gtest.h>

#include <regex>
#include <set>

#include <nlohmann/json.hpp>

#include "tests/trainer/faults/fault_harness.h"

namespace qtrain::faults {
namespace {

// A short, fast run: 1 adapter, short rows, a checkpoint every step, all of them kept.
const std::string kQuick = " --set training.micro_batch_size=1 --set data.max_seq_len=160 --set data.eval_fraction=0"
                           " --set model.target_modules=[q_proj,v_proj] --set lora.r=2 --set schedule.log_every=1"
                           " --set schedule.eval_every=0 --set schedule.save_every=1 --set schedule.keep_last=0";

class TrainCli : public ::testing::Test {
 protected:
  void SetUp() override {
    const fs::path root = QTRAIN_SOURCE_DIR;
    base_args_ = "train " + (root / "recipes" / "quickstart.yaml").string() + " --set data.files=[" +
                 (root / "recipes" / "quickstart" / "train.jsonl").string() + "] --set model.path=" + (tmp_.path / "base").string() +
                 " --set data.cache_dir=" + (tmp_.path / "cache").string() + kQuick;
    const Outcome o = run_qtrain(tmp_.path, base_args_ + " --dry-run --set output_dir=dry");
    ASSERT_EQ(o.exit_code, 0) << "creating the quick-start model: " << o.describe() << "\n" << o.output;
  }
  // qtrain train on the quick-start recipe into tmp/<out>, with `extra` arguments.
  Outcome train(const std::string& out, const std::string& extra) {
    return run_qtrain(tmp_.path, base_args_ + " --set output_dir=" + out + " " + extra);
  }
  std::set<std::string> checkpoints(const std::string& out) const {
    std::set<std::string> names;
    for (const auto& e : fs::directory_iterator(tmp_.path / out / "checkpoints")) names.insert(e.path().filename().string());
    return names;
  }
  std::vector<int64_t> train_steps(const std::string& out) const {
    std::vector<int64_t> steps;
    std::ifstream in(tmp_.path / out / "metrics.jsonl");
    for (std::string line; std::getline(in, line);) {
      const auto j = nlohmann::json::parse(line);
      if (j["kind"] == "train") steps.push_back(j["step"].get<int64_t>());
    }
    return steps;
  }
  static int count(const std::string& text, const std::string& what) {
    int n = 0;
    for (auto at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
    return n;
  }
  ScratchDir tmp_{"train-cli"};
  std::string base_args_;
};

// An absurd learning rate: after the first update the adapters overflow, and every later loss is
// non-finite. `skip` skips 10 such steps in a row without counting them as updates, then stops with
// exit 1; `stop` stops at the first. Either way the last checkpoint stays.
TEST_F(TrainCli, NonFiniteLossSkipsTenInARowThenStopsOrStopsAtOnce) {
  const std::string absurd = "--set training.learning_rate=1e38 --set training.warmup_steps=0 --set training.max_grad_norm=0 --set training.max_steps=40";
  const Outcome skip = train("skip", absurd + " --set training.on_nan=skip");
  EXPECT_EQ(skip.exit_code, 1) << skip.describe() << "\n" << skip.output;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(skip.output, m, std::regex("non-finite loss or gradient at step ([0-9]+); batch skipped"))) << skip.output;
  const std::string step = m[1];
  // Skipped batches are not updates: every warning names the same step.
  EXPECT_EQ(count(skip.output, "batch skipped"), 10) << skip.output;
  EXPECT_EQ(count(skip.output, "non-finite loss or gradient at step " + step + "; batch skipped"), 10) << skip.output;
  EXPECT_TRUE(std::regex_search(skip.output, std::regex("qtrain: error: .*10 consecutive non-finite steps at step " + step)))
      << skip.output;
  const int64_t finite_steps = std::stoll(step) - 1;
  ASSERT_GE(finite_steps, 1) << "the first step already had a non-finite loss: the test needs one good update first";
  std::vector<int64_t> expected(finite_steps);
  for (int64_t i = 0; i < finite_steps; ++i) expected[i] = i + 1;
  EXPECT_EQ(train_steps("skip"), expected) << "metrics.jsonl logs only the finite steps";
  EXPECT_TRUE(fs::exists(tmp_.path / "skip" / "checkpoints" / ("step-" + std::to_string(finite_steps)) / "trainer_state.h5"))
      << "the last checkpoint before the non-finite steps is kept";

  const Outcome stop = train("stop", absurd + " --set training.on_nan=stop");
  EXPECT_EQ(stop.exit_code, 1) << stop.describe() << "\n" << stop.output;
  EXPECT_NE(stop.output.find("qtrain: error: non-finite loss at step " + step), std::string::npos) << stop.output;
  EXPECT_EQ(count(stop.output, "batch skipped"), 0) << stop.output;
  EXPECT_EQ(train_steps("stop"), expected);
}

TEST_F(TrainCli, KeepLastKeepsTheNewestKCheckpoints) {
  Outcome o = train("keep2", "--set training.max_steps=5 --set schedule.keep_last=2");
  ASSERT_EQ(o.exit_code, 0) << o.output;
  EXPECT_EQ(checkpoints("keep2"), (std::set<std::string>{"step-4", "step-5"}));
  o = train("keep2", "--set training.max_steps=7 --set schedule.keep_last=2 --resume");
  ASSERT_EQ(o.exit_code, 0) << o.output;
  EXPECT_EQ(checkpoints("keep2"), (std::set<std::string>{"step-6", "step-7"}));
  o = train("keep1", "--set training.max_steps=3 --set schedule.keep_last=1");
  ASSERT_EQ(o.exit_code, 0) << o.output;
  EXPECT_EQ(checkpoints("keep1"), (std::set<std::string>{"step-3"}));
  o = train("keep0", "--set training.max_steps=3 --set schedule.keep_last=0");
  ASSERT_EQ(o.exit_code, 0) << o.output;
  EXPECT_EQ(checkpoints("keep0"), (std::set<std::string>{"step-1", "step-2", "step-3"})) << "keep_last 0 keeps all";
}

TEST_F(TrainCli, ResumeNamesACheckpointEitherWayAndRefusesAnOlderOne) {
  ASSERT_EQ(train("run", "--set training.max_steps=4").exit_code, 0);
  const fs::path ck = tmp_.path / "run" / "checkpoints";
  // An older checkpoint while newer ones exist: refused, nothing touched.
  const auto before = snapshot(tmp_.path / "run");
  Outcome o = train("run", "--set training.max_steps=6 --resume=" + (ck / "step-2").string());
  EXPECT_EQ(o.exit_code, 2) << o.describe() << "\n" << o.output;
  EXPECT_NE(o.output.find("step-4"), std::string::npos) << "the error names the newer checkpoint:\n" << o.output;
  std::map<std::string, std::string> kept;
  for (const auto& [name, bytes] : before)
    if (name != "config.yaml" && name != "metrics.jsonl") kept[name] = bytes;
  EXPECT_EQ(lost_files(kept, snapshot(tmp_.path / "run")), "");
  o = train("run", "--set training.max_steps=6 --resume " + (ck / "step-2").string());
  EXPECT_EQ(o.exit_code, 2) << "--resume DIR (two words), older checkpoint: " << o.describe() << "\n" << o.output;

  // The latest, as `--resume DIR` (two words) and as `--resume=DIR`.
  o = train("run", "--set training.max_steps=5 --resume " + (ck / "step-4").string());
  ASSERT_EQ(o.exit_code, 0) << "--resume DIR: " << o.output;
  EXPECT_NE(o.output.find("resumed from " + (ck / "step-4").string() + " at step 4"), std::string::npos) << o.output;
  o = train("run", "--set training.max_steps=6 --resume=" + (ck / "step-5").string());
  ASSERT_EQ(o.exit_code, 0) << "--resume=DIR: " << o.output;
  EXPECT_NE(o.output.find("resumed from " + (ck / "step-5").string() + " at step 5"), std::string::npos) << o.output;
  // A run directory means its latest checkpoint.
  o = train("run", "--set training.max_steps=7 --resume=" + (tmp_.path / "run").string());
  ASSERT_EQ(o.exit_code, 0) << "--resume=RUN_DIR: " << o.output;
  EXPECT_NE(o.output.find("resumed from " + (ck / "step-6").string() + " at step 6"), std::string::npos) << o.output;
  EXPECT_EQ(train_steps("run"), (std::vector<int64_t>{1, 2, 3, 4, 5, 6, 7}));
}

}  // namespace
}  // namespace qtrain::faults
