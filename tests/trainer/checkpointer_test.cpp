// The checkpointer (trainer/checkpointer.h) on its own — keep-last-K, the latest complete checkpoint,
// temporaries a crash leaves, what --resume resolves to, refusing another recipe's checkpoint or a
// second lineage — the run directory's lock, and the
// loop's signal and resume policies through the CLI: SIGTERM at random moments (mid-step, mid-eval,
// mid-checkpoint) resumes to the uninterrupted run's adapter, a second signal exits at once leaving
// only complete checkpoints, a checkpoint's RNG from another device type is refused by name, and a
// changed max_steps says that the schedule is stretched.
#include <gtest/gtest.h>

#include <chrono>
#include <random>
#include <set>
#include <thread>
#include <tuple>

#include <nlohmann/json.hpp>

#include "data/error.h"
#include "data/io/directory_lock.h"
#include "tests/trainer/faults/fault_harness.h"
#include "trainer/checkpointer.h"

namespace qtrain {
namespace {
namespace fs = std::filesystem;
using faults::Outcome;
using faults::ScratchDir;

NamedTensors tiny_adapter(float value) {
  const std::string m = "base_model.model.model.layers.0.self_attn.q_proj.";
  return {{m + "lora_A.weight", at::full({2, 8}, value)}, {m + "lora_B.weight", at::full({8, 2}, value)}};
}

AdapterInfo tiny_info() {
  AdapterInfo info;
  info.r = 2;
  info.alpha = 4;
  info.target_modules = {"q_proj"};
  return info;
}

TrainerState state_at(int64_t step, const std::string& hash) {
  TrainerState s;
  s.step = step;
  s.recipe_hash = hash;
  s.optimizer = "adamw_32bit";
  s.rng_state = at::zeros({16}, at::kByte);
  s.optimizer_state = {{"x/exp_avg", at::full({3}, static_cast<float>(step))}};
  return s;
}

TEST(Checkpointer, KeepsTheNewestKAndFindsTheLatest) {
  ScratchDir tmp("ckpt");
  Checkpointer ck(tmp.path, /*keep_last=*/2, "h");
  EXPECT_NO_THROW(ck.require_empty());
  EXPECT_FALSE(ck.resolve_resume(tmp.path).has_value()) << "--resume of a run with no checkpoint yet starts from step 0";
  for (int64_t s = 1; s <= 5; ++s) ck.save(state_at(s, "h"), tiny_adapter(static_cast<float>(s)), tiny_info());
  std::set<std::string> names;
  for (const auto& e : fs::directory_iterator(ck.dir())) names.insert(e.path().filename().string());
  EXPECT_EQ(names, (std::set<std::string>{"step-4", "step-5"}));
  EXPECT_EQ(latest_checkpoint(ck.dir()), ck.dir() / "step-5");
  EXPECT_THROW(ck.require_empty(), UsageError);
  EXPECT_EQ(ck.resolve_resume(tmp.path), ck.dir() / "step-5");
  EXPECT_EQ(ck.resolve_resume(ck.dir() / "step-5"), ck.dir() / "step-5");
  EXPECT_THROW(ck.resolve_resume(ck.dir() / "step-4"), UsageError) << "an older checkpoint while a newer exists";
  EXPECT_THROW(ck.resolve_resume(tmp.path / "nowhere"), UsageError);

  NamedTensors adapter;
  const TrainerState back = ck.load(ck.dir() / "step-5", &adapter);
  EXPECT_EQ(back.step, 5);
  EXPECT_TRUE(at::equal(back.optimizer_state.at(0).second, at::full({3}, 5.0f)));
  EXPECT_TRUE(at::equal(adapter.at(0).second, at::full({2, 8}, 5.0f)));
  Checkpointer other(tmp.path, 2, "another recipe");
  EXPECT_THROW(other.load(ck.dir() / "step-5", &adapter), UsageError);

  // A checkpoint from another directory into this run, which has its own: two lineages, refused.
  ScratchDir elsewhere("ckpt-elsewhere");
  Checkpointer third(elsewhere.path, 2, "h");
  third.save(state_at(7, "h"), tiny_adapter(7), tiny_info());
  EXPECT_THROW(ck.resolve_resume(third.dir() / "step-7"), UsageError);
  ScratchDir empty("ckpt-empty");
  EXPECT_EQ(Checkpointer(empty.path, 2, "h").resolve_resume(third.dir() / "step-7"), third.dir() / "step-7")
      << "into an empty run directory it is how a run moves";
}

TEST(DirectoryLock, OneProcessPerRunDirectory) {
  ScratchDir tmp("lock");
  {
    DirectoryLock held(tmp.path);
    // flock is per open file description: a second lock in this process conflicts like another process's.
    try {
      DirectoryLock second(tmp.path);
      FAIL() << "a second lock on the same directory was granted";
    } catch (const UsageError& e) {
      EXPECT_NE(std::string(e.what()).find("in use by another qtrain process (pid " + std::to_string(getpid()) + ")"),
                std::string::npos)
          << e.what();
    }
  }
  EXPECT_NO_THROW(DirectoryLock again(tmp.path)) << "released with its holder";
}

TEST(Checkpointer, CleansWhatACrashLeftAndRestoresAnOrphanedOldCopy) {
  ScratchDir tmp("ckpt-crash");
  {
    Checkpointer ck(tmp.path, 0, "h");
    ck.save(state_at(1, "h"), tiny_adapter(1), tiny_info());
    ck.save(state_at(2, "h"), tiny_adapter(2), tiny_info());
  }
  const fs::path dir = tmp.path / "checkpoints";
  // A crash while writing step-3, one while deleting step-1, and one between the two renames that
  // replace step-2 (the complete old copy is the only one left).
  fs::create_directories(dir / "step-3.tmp.123.456" / "adapter");
  faults::write_bytes(dir / "step-3.tmp.123.456" / "trainer_state.h5", "half");
  fs::rename(dir / "step-1", dir / "step-1.del.77.5");
  fs::rename(dir / "step-2", dir / "step-2.old.88.99");
  Checkpointer ck(tmp.path, 0, "h");
  EXPECT_TRUE(fs::exists(dir / "step-3.tmp.123.456")) << "constructing a checkpointer touches nothing (another process may own it)";
  ck.recover_after_crash();
  std::set<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.insert(e.path().filename().string());
  EXPECT_EQ(names, (std::set<std::string>{"step-2"}));
  NamedTensors adapter;
  EXPECT_EQ(ck.load(dir / "step-2", &adapter).step, 2);
}

// ---- through the CLI, on the quick-start recipe made tiny ----

class LoopSignals : public ::testing::Test {
 protected:
  void SetUp() override {
    const fs::path root = QTRAIN_SOURCE_DIR;
    // 2 micro-batches per step and an eval every 4 steps, so signals land mid-step and mid-eval too.
    args_ = "train " + (root / "recipes" / "quickstart.yaml").string() + " --set data.files=[" +
            (root / "recipes" / "quickstart" / "train.jsonl").string() + "] --set model.path=" + (tmp_.path / "base").string() +
            " --set data.cache_dir=" + (tmp_.path / "cache").string() +
            " --set training.micro_batch_size=2 --set training.gradient_accumulation=2 --set data.max_seq_len=160"
            " --set model.target_modules=[q_proj,v_proj] --set lora.r=2 --set training.max_steps=24"
            " --set training.schedule=cosine --set training.warmup_steps=2 --set schedule.log_every=1"
            " --set schedule.eval_every=4 --set schedule.eval_batches=8 --set schedule.save_every=4 --set schedule.keep_last=0";
    const Outcome o = faults::run_qtrain(tmp_.path, args_ + " --dry-run --set output_dir=dry");
    ASSERT_EQ(o.exit_code, 0) << "creating the quick-start model: " << o.describe() << "\n" << o.output;
  }
  Outcome train(const std::string& out, const std::string& extra = "") {
    return faults::run_qtrain(tmp_.path, args_ + " --set output_dir=" + out + " " + extra);
  }
  // Starts a run, waits until its log shows `marker` (or ~60 s), sends `signals` after `delay`.
  Outcome signal_run(const std::string& out, const std::string& extra, const std::string& marker, std::chrono::milliseconds delay,
                     std::vector<int> signals) {
    const fs::path log = tmp_.path / (out + ".log");
    fs::remove(log);  // else the marker is found in the previous run's log before the shell truncates it
    const pid_t pid = faults::spawn_qtrain(tmp_.path, args_ + " --set output_dir=" + out + " " + extra, log);
    for (int i = 0; i < 600 && faults::read_bytes(log).find(marker) == std::string::npos; ++i) {
      int status = 0;
      if (waitpid(pid, &status, WNOHANG) == pid) {
        Outcome o = faults::outcome_of(status);
        o.output = faults::read_bytes(log);
        return o;  // ended before the marker
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    std::this_thread::sleep_for(delay);
    for (int s : signals) kill(pid, s);
    int status = 0;
    waitpid(pid, &status, 0);
    Outcome o = faults::outcome_of(status);
    o.output = faults::read_bytes(log);
    return o;
  }
  ScratchDir tmp_{"loop-signals"};
  std::string args_;
};

// (kind, step, loss or eval_loss) of every record of a metrics.jsonl.
std::vector<std::tuple<std::string, int64_t, double>> records(const fs::path& jsonl) {
  std::vector<std::tuple<std::string, int64_t, double>> out;
  std::ifstream in(jsonl);
  for (std::string line; std::getline(in, line);) {
    const auto j = nlohmann::json::parse(line);
    const std::string kind = j["kind"];
    out.emplace_back(kind, j["step"].get<int64_t>(), j[kind == "eval" ? "eval_loss" : "loss"].get<double>());
  }
  return out;
}

TEST_F(LoopSignals, SigtermAtRandomMomentsResumesToTheUninterruptedAdapter) {
  const auto t0 = std::chrono::steady_clock::now();
  const Outcome straight = train("straight");
  ASSERT_EQ(straight.exit_code, 0) << straight.output;
  // Delays within the first half of a whole run (set-up included) land inside the training of a
  // resumed one, whatever this machine's speed.
  const int half_ms = static_cast<int>(
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count() / 2);
  const uint64_t seed = std::random_device{}();
  std::cout << "SIGTERM delays seed " << seed << " (0-" << half_ms << " ms)\n";
  std::mt19937_64 rng(seed);
  int stopped = 0;
  for (int attempt = 0; attempt < 12 && stopped < 4; ++attempt) {
    const auto delay = std::chrono::milliseconds(std::uniform_int_distribution<int>(0, half_ms)(rng));
    const Outcome o = signal_run("resumed", attempt == 0 ? "" : "--resume", "qtrain:", delay, {SIGTERM});
    const bool done = o.output.find("done:") != std::string::npos;
    // A signal after the run has finished (its handler gone with the run) ends the exiting process:
    // nothing is lost then. Any other ending than a clean exit is a failure.
    if (!(done && o.signal == SIGTERM)) ASSERT_EQ(o.exit_code, 0) << o.describe() << "\n" << o.output;
    if (o.output.find("stopped by signal") != std::string::npos) ++stopped;
    if (done) break;
  }
  const Outcome last = train("resumed", "--resume");
  ASSERT_EQ(last.exit_code, 0) << last.output;
  EXPECT_GE(stopped, 1) << "no SIGTERM landed inside the run";
  EXPECT_EQ(faults::read_bytes(tmp_.path / "resumed" / "adapter" / "adapter_model.safetensors"),
            faults::read_bytes(tmp_.path / "straight" / "adapter" / "adapter_model.safetensors"))
      << "a run stopped by SIGTERM " << stopped << " times and resumed must end with the uninterrupted adapter";
  // And the same log: every train and eval record once, in order, with the same losses (an evaluation a
  // stop interrupted is redone by the resumed run; none is lost or doubled).
  EXPECT_EQ(records(tmp_.path / "resumed" / "metrics.jsonl"), records(tmp_.path / "straight" / "metrics.jsonl"));
}

TEST_F(LoopSignals, ASecondSignalExitsAtOnceLeavingOnlyCompleteCheckpoints) {
  // Two different signals back to back: both are pending at once (two of the same kind would merge into
  // one), so the second arrives while the first is being handled, however fast the run stops.
  const Outcome o = signal_run("twice", "", "step 5/", std::chrono::milliseconds(0), {SIGINT, SIGTERM});
  // Whichever of the two the kernel delivers second is the one that exits.
  EXPECT_TRUE(o.exit_code == 128 + SIGTERM || o.exit_code == 128 + SIGINT) << o.describe() << "\n" << o.output;
  EXPECT_NE(o.output.find("second signal, exiting now"), std::string::npos) << o.output;
  for (const auto& e : fs::directory_iterator(tmp_.path / "twice" / "checkpoints")) {
    const std::string name = e.path().filename().string();
    if (name.rfind("step-", 0) == 0 && name.find('.') == std::string::npos)
      EXPECT_TRUE(fs::exists(e.path() / "trainer_state.h5") && fs::exists(e.path() / "adapter" / "adapter_model.safetensors"))
          << name << " is not complete";
  }
}

TEST_F(LoopSignals, ACheckpointFromAnotherDeviceTypeIsRefusedByName) {
  ASSERT_EQ(train("cpu-run", "--set training.max_steps=4").exit_code, 0);
  const fs::path state = tmp_.path / "cpu-run" / "checkpoints" / "step-4" / "trainer_state.h5";
  TrainerState s = load_trainer_state(state);
  s.rng_device = "cuda";  // as a GPU run would have written it
  save_trainer_state(state, s);
  const Outcome o = train("cpu-run", "--set training.max_steps=8 --resume");
  EXPECT_EQ(o.exit_code, 2) << o.describe() << "\n" << o.output;
  EXPECT_NE(o.output.find("step-4/trainer_state.h5 was trained on cuda and this run is on cpu"), std::string::npos) << o.output;
}

TEST_F(LoopSignals, ALongerRunSaysTheScheduleIsStretched) {
  ASSERT_EQ(train("extend", "--set training.max_steps=8").exit_code, 0);
  const Outcome o = train("extend", "--set training.max_steps=12 --resume");
  ASSERT_EQ(o.exit_code, 0) << o.output;
  EXPECT_NE(o.output.find("the run had 8 steps and now has 12: the learning-rate schedule is stretched"), std::string::npos)
      << o.output;
}

}  // namespace
}  // namespace qtrain
