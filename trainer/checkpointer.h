// Checkpoints of a run: <output_dir>/checkpoints/step-N/ = adapter/ (PEFT format, master weights in
// their own dtype) + trainer_state.h5 (optimizer state, step, data cursor, RNG, recipe hash).
//
// Durability: a checkpoint is built in a temporary sibling, every file and directory in it fsynced,
// then renamed into place and the checkpoints directory fsynced (data/io/atomic_file.h). A crash or a
// SIGKILL at any moment leaves every earlier checkpoint intact and at most a temporary, which the next
// start removes. Only complete checkpoints (a step-N directory with trainer_state.h5) are ever used.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "data/io/peft_adapter.h"
#include "data/io/trainer_state.h"

namespace qtrain {

// "step-N" → N; anything else → nullopt. The one place that knows the directory naming.
std::optional<int64_t> checkpoint_step(const std::filesystem::path& dir);

// The complete checkpoint with the largest step under `checkpoints_dir`, if any.
std::optional<std::filesystem::path> latest_checkpoint(const std::filesystem::path& checkpoints_dir);

// What a checkpoint records about the ranks that wrote it (data parallelism, trainer/distributed.h):
// their number, and each rank's dropout stream (rank 0's is also TrainerState::rng_state). Kept in
// step-N/ranks.safetensors; a checkpoint without that file was written by one process.
struct RankStates {
  int64_t world_size = 1;
  std::vector<at::Tensor> rng;  // uint8 generator states by rank; empty: only TrainerState's
};

class Checkpointer {
 public:
  // run_dir: the recipe's output_dir. keep_last: checkpoints kept (0 = all). recipe_hash: what a
  // checkpoint must match to be resumed. Touches nothing on disk.
  Checkpointer(std::filesystem::path run_dir, int64_t keep_last, std::string recipe_hash);

  // Removes what a crash left in the checkpoints directory (data/io/atomic_file.h). Only while holding
  // the run directory's lock: another process's temporaries look the same.
  void recover_after_crash() const;

  std::filesystem::path dir() const { return run_dir_ / "checkpoints"; }

  // A fresh start must not mix with another run: throws UsageError when checkpoints exist.
  void require_empty() const;

  // What --resume means: `arg` is a checkpoint directory, or a run directory (its latest checkpoint).
  // Refused: an older checkpoint of this run while newer ones exist (the next --resume and keep-last
  // would pick up the abandoned continuation), and a checkpoint from elsewhere while this run has
  // checkpoints of its own (two lineages in one directory). nullopt: `arg` is this run's directory
  // and it has no checkpoint yet (a job requeued before its first checkpoint starts from step 0).
  std::optional<std::filesystem::path> resolve_resume(const std::filesystem::path& arg) const;

  // Reads a checkpoint: its trainer state (checked against the recipe hash) and adapter tensors.
  TrainerState load(const std::filesystem::path& checkpoint, NamedTensors* adapter) const;

  // Writes step-<state.step> atomically, then deletes all but the newest keep_last checkpoints.
  // A checkpoint of that step already on disk is left as it is (the same step is the same state).
  std::filesystem::path save(const TrainerState& state, const NamedTensors& adapter, const AdapterInfo& info,
                             const RankStates& ranks = {});

  // The ranks that wrote `checkpoint` (world 1 when it has no ranks.safetensors). InputError naming
  // the file when it is malformed.
  static RankStates load_ranks(const std::filesystem::path& checkpoint);

 private:
  void prune() const;

  std::filesystem::path run_dir_;
  int64_t keep_last_;
  std::string recipe_hash_;
};

}  // namespace qtrain
