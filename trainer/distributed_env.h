// Where this process sits among the ranks of a multi-process run, read from the launcher's
// environment (the env:// rendezvous): torchrun's RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE,
// MASTER_ADDR, MASTER_PORT, or, when those are absent, Slurm's SLURM_PROCID, SLURM_NTASKS,
// SLURM_LOCALID, SLURM_NTASKS_PER_NODE and the first host of SLURM_JOB_NODELIST (`srun qtrain RECIPE`).
// Parsing only: joining the ranks is trainer/distributed.h.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>

#include <c10/core/Device.h>

namespace qtrain {

struct LaunchEnv {
  std::string launcher;  // "torchrun" (RANK/WORLD_SIZE) or "slurm"
  int64_t rank = 0, world_size = 1;
  int64_t local_rank = 0, local_world_size = 1;  // within this node: picks cuda:LOCAL_RANK
  std::string master_addr;                       // host of rank 0's rendezvous store
  int64_t master_port = 0;
  // torchrun's agent already serves the store at MASTER_ADDR:MASTER_PORT (TORCHELASTIC_USE_AGENT_STORE):
  // rank 0 connects to it like the others instead of listening on the port itself.
  bool agent_store = false;
  int64_t restart_count = 0;  // TORCHELASTIC_RESTART_COUNT: keys of an earlier attempt are not reused

  std::string where() const { return master_addr + ":" + std::to_string(master_port); }
};

// A variable of the environment, or nullopt when unset. Tests pass their own.
using EnvLookup = std::function<std::optional<std::string>(const std::string& name)>;
std::optional<std::string> process_env(const std::string& name);

// nullopt: no launcher variables (a plain single process). Throws UsageError naming the variables
// when a launch is incomplete or inconsistent (RANK without MASTER_ADDR, RANK >= WORLD_SIZE, a
// non-numeric value, a port out of range).
std::optional<LaunchEnv> read_launch_env(const EnvLookup& env = process_env);

// The first host of a Slurm node list: "gpu[03-05,9],cpu1" → "gpu03", "a[1-2]-b[07-08]" → "a1-b07".
// Throws UsageError on an empty or unbalanced list.
std::string first_slurm_host(const std::string& nodelist);

// The CUDA device of this rank: cuda:LOCAL_RANK, or cuda:0 when the launcher gave each task one
// visible device (CUDA_VISIBLE_DEVICES per task). UsageError when LOCAL_RANK has no device.
c10::Device local_cuda_device(const std::optional<LaunchEnv>& env, int64_t visible_devices);

// local_cuda_device for this process (its environment, the CUDA devices it sees).
c10::Device rank_cuda_device();

// Before the ranks connect (the quickstart's model is made before training starts), rank 0 of the
// launch, or a process without a launcher, makes shared files and the others wait for them.
bool launched_as_rank0(const EnvLookup& env = process_env);
// Polls until `path` exists (written atomically by rank 0, so complete once it exists); UsageError
// naming `what` after timeout_s (on several nodes the directory must be on a shared file system).
void wait_for_path(const std::filesystem::path& path, double timeout_s, const std::string& what);

}  // namespace qtrain
