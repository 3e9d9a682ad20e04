// The kill test (issue 8, "Faults, tested in CI"): a short run on the shared tiny model, checkpointing
// every few steps, is SIGKILLed at random moments (at random times, while a checkpoint is being
// written, right after one is renamed into place) at least 20 times and resumed with `--resume` after
// each. It must end with the adapter an uninterrupted run writes, byte for byte, and a metrics.jsonl
// that has each step once, with the uninterrupted run's losses. After every kill, each step-N directory
// must be a complete checkpoint (renames are atomic; only temporaries may be half written).
//
// The kill times come from a seed printed at the start; QTRAIN_KILL_SEED=N reruns with the same draws
// (the moments still move with the machine's speed). A second, shorter run does the same with 8-bit
// optimizer state paged through a two-page pool (issue 13): its checkpoints hold the codes and absmax.
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/inotify.h>

#include <chrono>
#include <optional>
#include <regex>
#include <set>
#include <thread>

#include <nlohmann/json.hpp>

#include "tests/trainer/faults/fault_harness.h"

namespace qtrain::faults {
namespace {

using Clock = std::chrono::steady_clock;
constexpr int kKills = 24;       // the issue asks for at least 20
constexpr int kMaxAttempts = 80;  // attempts that end on their own do not count as kills
constexpr int kSteps = 36;
constexpr int kSaveEvery = 3;

bool is_checkpoint_name(const std::string& name) {
  static const std::regex re("step-[0-9]+");
  return std::regex_match(name, re);
}

// Short Guanaco-format rows the TinyStories tokenizer handles (~60 tokens); 96 rows = 12 optimizer
// steps of 8 rows, so the run crosses epoch boundaries and the data cursor is resumed mid-epoch.
void write_data(const fs::path& file) {
  const char* names[] = {"Lily", "Tom", "Sue", "Ben", "Max", "Mia"};
  const char* things[] = {"a red ball", "a big dog", "a little cat", "a blue car", "a tall tree", "a warm cake"};
  std::ofstream out(file);
  for (int i = 0; i < 96; ++i) {
    const std::string who = names[i % 6], what = things[(i / 6) % 6];
    out << nlohmann::json{{"text", "### Human: Tell a story about " + who + " and " + what + ". ### Assistant: " + who + " found " +
                                       what + " and was happy."}}.dump()
        << "\n";
  }
}

void write_recipe(const fs::path& file, const fs::path& model, const fs::path& data, const fs::path& cache,
                  const std::string& optimizer_yaml) {
  std::ofstream(file) << "model:\n  path: " << model.string() << "\n  target_modules: all-linear\n"
                      << "quantization:\n  enabled: true\n"
                      << "lora:\n  r: 4\n  alpha: 8\n  dropout: 0.1\n"  // dropout: the RNG state must resume too
                      << "data:\n  files: [" << data.string() << "]\n  format: guanaco\n  max_seq_len: 64\n"
                      << "  eval_fraction: 0\n  seed: 3\n  cache_dir: " << cache.string() << "\n"
                      << "training:\n  micro_batch_size: 4\n  gradient_accumulation: 2\n  max_steps: " << kSteps << "\n"
                      << "  learning_rate: 2.0e-3\n  schedule: cosine\n  warmup_steps: 4\n  seed: 5\n  device: cpu\n"
                      << "schedule:\n  log_every: 1\n  eval_every: 0\n  save_every: " << kSaveEvery << "\n  keep_last: 2\n"
                      << optimizer_yaml << "output_dir: unused\n";
}

// Watches a run's checkpoints directory (created by qtrain, so the run directory is watched until it
// appears) for entries being created (a checkpoint's temporary) and renamed into place (step-N).
class CheckpointWatch {
 public:
  explicit CheckpointWatch(fs::path run) : run_(std::move(run)), fd_(inotify_init1(IN_NONBLOCK | IN_CLOEXEC)) {
    fs::create_directories(run_);
    inotify_add_watch(fd_, run_.c_str(), IN_CREATE | IN_MOVED_TO);
    arm();
  }
  ~CheckpointWatch() { close(fd_); }

  enum class Event { kNone, kTemporaryCreated, kCheckpointRenamed };

  // Waits up to `timeout_ms` for the next event in the checkpoints directory.
  Event next(int timeout_ms) {
    pollfd p{fd_, POLLIN, 0};
    if (poll(&p, 1, timeout_ms) <= 0) return Event::kNone;
    alignas(inotify_event) char buf[4096];
    const ssize_t n = read(fd_, buf, sizeof buf);
    Event result = Event::kNone;
    for (ssize_t off = 0; off < n;) {
      const auto* e = reinterpret_cast<const inotify_event*>(buf + off);
      off += sizeof(inotify_event) + e->len;
      const std::string name = e->len ? e->name : "";
      if (e->wd != ck_wd_) {
        if (name == "checkpoints") arm();
        continue;
      }
      if (is_checkpoint_name(name) && (e->mask & IN_MOVED_TO)) result = Event::kCheckpointRenamed;
      else if (!is_checkpoint_name(name) && (e->mask & IN_CREATE) && result == Event::kNone) result = Event::kTemporaryCreated;
    }
    return result;
  }

 private:
  void arm() {
    if (ck_wd_ < 0 && fs::is_directory(run_ / "checkpoints"))
      ck_wd_ = inotify_add_watch(fd_, (run_ / "checkpoints").c_str(), IN_CREATE | IN_MOVED_TO);
  }
  fs::path run_;
  int fd_;
  int ck_wd_ = -1;
};

struct Metrics {
  std::map<int64_t, std::vector<double>> train_losses;  // step → the loss of every record of that step
  std::vector<std::string> bad_lines;
};

Metrics read_metrics(const fs::path& file) {
  Metrics m;
  std::ifstream in(file);
  int line_no = 0;
  for (std::string line; std::getline(in, line);) {
    ++line_no;
    const auto j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.is_object() || !j.contains("kind") || !j.contains("step")) {
      m.bad_lines.push_back(std::to_string(line_no) + ": " + line);
      continue;
    }
    if (j["kind"] == "train") m.train_losses[j["step"].get<int64_t>()].push_back(j["loss"].get<double>());
  }
  return m;
}

// Entries of the checkpoints directory: the incomplete step-N directories, and the temporaries.
struct CheckpointsState {
  std::vector<std::string> incomplete;
  int temporaries = 0;
};

CheckpointsState inspect_checkpoints(const fs::path& dir) {
  CheckpointsState s;
  if (!fs::is_directory(dir)) return s;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    if (!is_checkpoint_name(name)) {
      ++s.temporaries;
      continue;
    }
    for (const char* f : {"trainer_state.h5", "adapter/adapter_model.safetensors", "adapter/adapter_config.json"})
      if (!fs::is_regular_file(e.path() / f)) s.incomplete.push_back(name + "/" + f + " missing");
  }
  return s;
}

// kills_wanted kills at random moments, each followed by --resume; `optimizer_yaml` is added to the recipe.
void kill_and_resume(const std::string& optimizer_yaml, int kills_wanted) {
  const fs::path model = shared_data() / "models" / "llama2c-xs-tok512-hf";
  if (!fs::is_regular_file(model / "model.safetensors"))
    GTEST_SKIP() << "the shared tiny model is not at " << model << " (../shared/data is absent): kill test skipped";

  uint64_t seed = std::random_device{}();
  if (const char* s = std::getenv("QTRAIN_KILL_SEED")) seed = std::stoull(s);
  std::cout << "kill test: seed " << seed << " (rerun with QTRAIN_KILL_SEED=" << seed << ")" << std::endl;
  std::mt19937_64 rng(seed);
  const auto t_test = Clock::now();

  ScratchDir tmp("kill");
  write_data(tmp.path / "data.jsonl");
  write_recipe(tmp.path / "recipe.yaml", model, tmp.path / "data.jsonl", tmp.path / "cache", optimizer_yaml);
  const std::string recipe = (tmp.path / "recipe.yaml").string();

  // The uninterrupted run, timed: its first checkpoint and its end give the start-up and step times.
  double t_first_ck = 0, t_total = 0;
  double write_s = 0;  // the longest checkpoint write seen: temporary created → renamed into place
  int writes = 0;
  {
    CheckpointWatch watch(tmp.path / "straight");
    const auto t0 = Clock::now();
    const pid_t pid = spawn_qtrain(tmp.path, "train " + recipe + " --set output_dir=straight", tmp.path / "straight.log");
    ASSERT_GT(pid, 0);
    int status = 0;
    std::optional<Clock::time_point> write_start;
    while (waitpid(pid, &status, WNOHANG) == 0) {
      const auto ev = watch.next(1);
      if (ev == CheckpointWatch::Event::kNone) continue;
      if (t_first_ck == 0) t_first_ck = std::chrono::duration<double>(Clock::now() - t0).count();
      if (ev == CheckpointWatch::Event::kTemporaryCreated) write_start = Clock::now();
      if (ev == CheckpointWatch::Event::kCheckpointRenamed && write_start) {
        write_s = std::max(write_s, std::chrono::duration<double>(Clock::now() - *write_start).count());
        ++writes;
        write_start.reset();
      }
    }
    t_total = std::chrono::duration<double>(Clock::now() - t0).count();
    const Outcome o = outcome_of(status);
    ASSERT_EQ(o.exit_code, 0) << "the uninterrupted run: " << o.describe() << "\n" << read_bytes(tmp.path / "straight.log");
    ASSERT_GT(t_first_ck, 0) << "the uninterrupted run wrote no checkpoint";
  }
  const double step_s = std::max(1e-3, (t_total - t_first_ck) / (kSteps - kSaveEvery));
  const double startup_s = std::max(0.0, t_first_ck - kSaveEvery * step_s);
  std::cout << "uninterrupted run: " << t_total << " s (start-up ~" << startup_s << " s, ~" << step_s * 1e3 << " ms/step, "
            << writes << " checkpoint writes seen, the longest " << write_s * 1e3 << " ms)" << std::endl;

  // The killed run. Each attempt is `--resume` (the first finds no checkpoint and starts from step 0).
  const fs::path run = tmp.path / "killed";
  CheckpointWatch watch(run);
  // Random times span start-up plus 1.5 checkpoint intervals: many kills land before the first step
  // after the resume, and the run advances slowly (about half of it under kills, the rest in the last
  // attempt). Should it finish early anyway, the kills go on at random times in the resumes of the
  // finished run (start-up, the final adapter write), since no checkpoint write would come.
  std::uniform_real_distribution<double> kill_time(0.0, startup_s + 1.5 * kSaveEvery * step_s);
  std::uniform_real_distribution<double> finished_kill_time(0.0, 1.5 * startup_s + 0.05);
  std::uniform_int_distribution<int> mode_of(0, 99);
  // Mid-write kills: half at once when the temporary appears, half within the longest write seen.
  std::uniform_int_distribution<int> write_delay_us(-static_cast<int>(write_s * 1e6) - 1, static_cast<int>(write_s * 1e6));
  int kills = 0, kills_in_write = 0, kills_after_rename = 0, finished_attempts = 0, attempts = 0;
  std::map<std::string, int> kills_by_mode;
  std::string last_log;
  while ((kills < kills_wanted || kills_in_write == 0) && attempts < kMaxAttempts) {
    ++attempts;
    const int m = mode_of(rng);
    const bool finished = fs::exists(run / "checkpoints" / ("step-" + std::to_string(kSteps)) / "trainer_state.h5");
    // Half the kills done and none mid-write yet: the next ones wait for a temporary and kill at once, so
    // the mid-write case is always covered (by chance alone, 8 kills miss it a few times in a hundred).
    const bool need_write_kill = !finished && kills_in_write == 0 && kills >= kills_wanted / 2;
    const std::string mode = need_write_kill        ? "checkpoint write"
                             : m < 50 || finished   ? "random time"
                             : m < 85               ? "checkpoint write"
                                                    : "after rename";
    const double at_s = finished ? finished_kill_time(rng) : kill_time(rng);
    const int delay_us = need_write_kill ? 0 : std::max(0, write_delay_us(rng));
    const fs::path log = tmp.path / ("attempt-" + std::to_string(attempts) + ".log");
    const auto t0 = Clock::now();
    const pid_t pid = spawn_qtrain(tmp.path, "train " + recipe + " --set output_dir=killed --resume", log);
    ASSERT_GT(pid, 0);
    int status = 0;
    bool exited = false;
    for (;;) {
      if (waitpid(pid, &status, WNOHANG) == pid) {
        exited = true;
        break;
      }
      const auto ev = watch.next(1);
      if (mode == "random time" && std::chrono::duration<double>(Clock::now() - t0).count() >= at_s) break;
      if (mode == "checkpoint write" && ev == CheckpointWatch::Event::kTemporaryCreated) {
        if (delay_us > 0) std::this_thread::sleep_for(std::chrono::microseconds(delay_us));
        break;
      }
      if (mode == "after rename" && ev == CheckpointWatch::Event::kCheckpointRenamed) {
        if (delay_us > 0) std::this_thread::sleep_for(std::chrono::microseconds(delay_us / 4));
        break;
      }
    }
    if (!exited) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
    }
    last_log = read_bytes(log);
    fs::remove(log);
    const Outcome o = outcome_of(status);
    if (o.signal == SIGKILL) {
      ++kills;
      ++kills_by_mode[mode];
      // What the kill left: complete step-N directories only, and perhaps a temporary.
      const CheckpointsState s = inspect_checkpoints(run / "checkpoints");
      if (s.temporaries > 0) ++kills_in_write;
      if (mode == "after rename") ++kills_after_rename;
      for (const auto& what : s.incomplete) ADD_FAILURE() << "after kill " << kills << " (" << mode << "): " << what;
    } else if (o.exit_code == 0) {
      ++finished_attempts;  // the run (or a resume of the finished run) ended before its kill time
    } else {
      FAIL() << "attempt " << attempts << " (after " << kills << " kills) ended with " << o.describe() << " instead of training on:\n"
             << last_log;
    }
  }
  ASSERT_GE(kills, kills_wanted) << "only " << kills << " kills in " << attempts << " attempts";
  // The last attempt runs to the end.
  const Outcome done = run_qtrain(tmp.path, "train " + recipe + " --set output_dir=killed --resume");
  ASSERT_EQ(done.exit_code, 0) << "the final resume: " << done.describe() << "\n" << done.output;

  std::cout << kills << " kills (";
  for (const auto& [mode, n] : kills_by_mode) std::cout << mode << " " << n << ", ";
  std::cout << kills_in_write << " left a checkpoint temporary behind), " << finished_attempts
            << " attempts ended on their own; " << std::chrono::duration<double>(Clock::now() - t_test).count() << " s in all"
            << std::endl;
  EXPECT_GE(kills_in_write, 1) << "no kill landed while a checkpoint was being written";

  // The adapter, byte for byte.
  for (const char* f : {"adapter/adapter_model.safetensors", "adapter/adapter_config.json"}) {
    ASSERT_TRUE(fs::is_regular_file(run / f)) << f << " missing after the final resume:\n" << done.output;
    EXPECT_TRUE(read_bytes(run / f) == read_bytes(tmp.path / "straight" / f)) << f << " differs from the uninterrupted run's";
  }
  // metrics.jsonl: every line a record, each step once, with the uninterrupted run's loss.
  const Metrics straight = read_metrics(tmp.path / "straight" / "metrics.jsonl");
  const Metrics killed = read_metrics(run / "metrics.jsonl");
  ASSERT_EQ(straight.train_losses.size(), static_cast<std::size_t>(kSteps));
  for (const auto& l : killed.bad_lines) ADD_FAILURE() << "metrics.jsonl line " << l << " is not a JSON record";
  for (int64_t step = 1; step <= kSteps; ++step) {
    auto it = killed.train_losses.find(step);
    if (it == killed.train_losses.end()) {
      ADD_FAILURE() << "metrics.jsonl has no record of step " << step;
      continue;
    }
    EXPECT_EQ(it->second.size(), 1u) << "metrics.jsonl has " << it->second.size() << " records of step " << step;
    EXPECT_EQ(it->second.front(), straight.train_losses.at(step).front()) << "loss at step " << step;
  }
  EXPECT_EQ(killed.train_losses.size(), static_cast<std::size_t>(kSteps)) << "records of steps beyond " << kSteps;
  // The finished run keeps the last checkpoints, complete, and no temporaries.
  const CheckpointsState end = inspect_checkpoints(run / "checkpoints");
  EXPECT_TRUE(end.incomplete.empty());
  EXPECT_EQ(end.temporaries, 0) << "checkpoint temporaries left in " << run / "checkpoints" << " after a clean finish";
}

TEST(Faults, KillAtRandomMomentsAndResumeGivesTheUninterruptedAdapter) { kill_and_resume("", kKills); }

// 8-bit state (min_8bit_size 256: every LoRA matrix of 256+ elements of the tiny model) in 4 KiB pages, two
// on the "device" at a time: the state crosses the pager on every step and every checkpoint. Fewer kills: the
// paths that differ from the 32-bit run are the optimizer's state and its pages, not the checkpoint writes.
TEST(Faults, KillAndResumeWithPaged8bitOptimizerState) {
  kill_and_resume("optimizer:\n  name: paged_adamw_8bit\n  min_8bit_size: 256\n  page_kb: 4\n  device_budget_mb: 0.0078125\n", 8);
}

}  // namespace
}  // namespace qtrain::faults
