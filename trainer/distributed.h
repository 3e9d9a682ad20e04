// Data parallelism over c10d (design.md §9): every rank holds the whole NF4 base and the same adapter,
// trains on its own shard of each step's micro-batches (the Loader's rank sharding) and sums the
// adapter gradients and the step's token and loss counts across ranks through train_step's
// StepReduce, so the update is the one a single process makes with the same global batch.
//
//   join      env:// rendezvous (trainer/distributed_env.h) → TCPStore → every rank checks in within
//             distributed.timeout → ProcessGroupNCCL (CUDA) or ProcessGroupGloo (CPU)
//   set-up    rank 0 first where files are made (token cache); same recipe and LoRA init (checksums)
//   each step counts / gradient buckets / loss all-reduced (sums); a stop flag all-reduced (max) at
//             the step boundary, so a SIGTERM to any rank stops all of them after the same step
//   rank 0    logs, evaluates, writes checkpoints and the adapter; the others wait at a barrier
//   failure   a collective that fails (a rank died, or a timeout) names the lost ranks: survivors mark
//             themselves in the store and whoever stays silent is lost
//
// A single process (no launcher variables, or WORLD_SIZE=1) gets the identity everywhere.
//
// The seam for sharding the base (FSDP-style, for 70B+ on 24 GB cards): the base's quantized weights
// would be split here by rank and gathered per layer inside LlamaModel's layer loop; the adapter,
// the optimizer and this class's gradient path stay as they are (docs/ARCHITECTURE.md).
#pragma once

#include <chrono>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "data/dataset/batching.h"
#include "data/io/named_tensors.h"
#include "trainer/checkpointer.h"
#include "trainer/config.h"
#include "trainer/distributed_env.h"
#include "trainer/step.h"

namespace qtrain {

class DataParallel {
 public:
  DataParallel();  // one process
  ~DataParallel();
  DataParallel(const DataParallel&) = delete;
  DataParallel& operator=(const DataParallel&) = delete;

  // Joins the ranks `env` describes (nullopt or world 1: one process, nothing to join). Throws
  // UsageError for a bad launch: distributed.world_size contradicting it, a backend that does not fit
  // the device, MASTER_PORT in use, rank 0 unreachable, or ranks missing after distributed.timeout.
  static std::unique_ptr<DataParallel> join(const Recipe& r, const std::optional<LaunchEnv>& env, at::Device device);

  int64_t rank() const;
  int64_t world() const;
  bool is_main() const { return rank() == 0; }
  bool single() const { return world() == 1; }
  // What rank 0 tells the user: the ranks and backend, a launch that leaves GPUs idle, resharding on
  // resume. Empty for a plain single process.
  const std::string& describe() const { return note_; }

  // The hooks train_step calls (empty = identity for one process).
  StepReduce step_reduce();
  // A stop request inside a step or an evaluation: one process honours it at once; ranks only at the
  // step boundary (agree_stop), since a rank leaving mid-step would strand the others' collectives.
  std::function<bool()> within_step(const std::function<bool()>& stop) const;
  // True when any rank asked to stop (a collective at each step boundary; sticky once true).
  // `signal`: what this rank received, so every rank can say which signal stopped the run.
  bool agree_stop(bool requested, int signal = 0);
  // The signal that stopped the run: this rank's own, else the one another rank received.
  int stop_signal(int local) const { return local != 0 ? local : stop_signal_; }
  void barrier(const std::string& what);
  // f on rank 0, then on the others (files rank 0 makes, e.g. the token cache, are read by the rest).
  // If rank 0 fails, every rank throws instead of waiting.
  void main_first(const std::string& what, const std::function<void()>& f);
  // Every rank runs the same recipe and starts from the same adapter (bit-identical); else every rank
  // throws, naming which.
  void check_identical(const NamedTensors& adapter, const std::string& recipe_hash);
  // Each rank's dropout stream: rank 0 keeps `seed` (one process is unchanged), the others derive theirs.
  uint64_t dropout_seed(uint64_t seed) const;

  // A checkpoint of the ranks' state (every rank calls it): rank 0 writes it with every rank's dropout
  // stream; nobody continues before it is complete on disk. Returns its directory.
  std::filesystem::path save_checkpoint(Checkpointer& c, const TrainerState& s, const NamedTensors& adapter, const AdapterInfo& info);
  // This rank's dropout stream from a checkpoint (rank0_state: TrainerState::rng_state): exact with
  // the world size it was written with; with another, ranks that did not exist then get fresh streams.
  at::Tensor resumed_rng(const std::filesystem::path& checkpoint, const at::Tensor& rank0_state);
  // This rank's data cursor. Under another world size the position is re-sharded: the global
  // micro-batches consumed so far stay consumed (rounded up to a whole step of the new world: none is
  // trained twice) and `note` says so.
  Cursor resumed_cursor(const std::filesystem::path& checkpoint, const Cursor& saved, std::shared_ptr<const ExampleSet> data,
                        int64_t micro_batch_size, const DataConfig& config);

 private:
  struct Group;
  void all_reduce(at::Tensor& t, int op, const std::string& what);
  void all_reduce_buckets(const std::vector<at::Tensor>& grads);
  bool all_ok(bool ok, const std::string& what);

  std::unique_ptr<Group> g_;  // null: one process
  int64_t bucket_bytes_ = 25 << 20;
  bool stopped_ = false;
  int stop_signal_ = 0;
  std::string note_;
};

}  // namespace qtrain
