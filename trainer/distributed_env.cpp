#include "trainer/distributed_env.h"

#include <c10/core/impl/DeviceGuardImplInterface.h>

#include <charconv>
#include <chrono>
#include <thread>
#include <cstdlib>
#include <vector>

#include "data/error.h"

namespace qtrain {
namespace {

int64_t parse_int(const std::string& name, const std::string& value) {
  int64_t v = 0;
  const char* end = value.data() + value.size();
  auto [ptr, ec] = std::from_chars(value.data(), end, v);
  if (ec != std::errc() || ptr != end || value.empty())
    throw UsageError("environment variable " + name + "='" + value + "' is not an integer");
  return v;
}

// Slurm's SLURM_NTASKS_PER_NODE / SLURM_TASKS_PER_NODE look like "4" or "4(x2),3": the first count.
std::optional<int64_t> leading_count(const std::optional<std::string>& v) {
  if (!v || v->empty()) return std::nullopt;
  std::size_t n = 0;
  while (n < v->size() && std::isdigit(static_cast<unsigned char>((*v)[n]))) ++n;
  if (n == 0) return std::nullopt;
  return std::stoll(v->substr(0, n));
}

void check_ranks(const LaunchEnv& e, const std::string& rank_var, const std::string& world_var) {
  if (e.world_size < 1) throw UsageError(world_var + "=" + std::to_string(e.world_size) + ": must be at least 1");
  if (e.rank < 0 || e.rank >= e.world_size)
    throw UsageError(rank_var + "=" + std::to_string(e.rank) + " is outside 0.." + std::to_string(e.world_size - 1) + " (" +
                     world_var + "=" + std::to_string(e.world_size) + ")");
  if (e.local_rank < 0 || e.local_rank >= std::max<int64_t>(e.local_world_size, 1))
    throw UsageError("local rank " + std::to_string(e.local_rank) + " is outside 0.." + std::to_string(e.local_world_size - 1) +
                     " (the ranks on this node)");
  if (e.master_port < 1 || e.master_port > 65535)
    throw UsageError("MASTER_PORT=" + std::to_string(e.master_port) + ": a TCP port is 1..65535");
}

}  // namespace

std::optional<std::string> process_env(const std::string& name) {
  const char* v = std::getenv(name.c_str());
  if (!v) return std::nullopt;
  return std::string(v);
}

std::string first_slurm_host(const std::string& nodelist) {
  // The first entry: up to the first comma outside brackets.
  std::string first;
  int depth = 0;
  for (char c : nodelist) {
    if (c == '[') ++depth;
    if (c == ']') --depth;
    if (depth < 0) break;
    if (c == ',' && depth == 0) break;
    first += c;
  }
  if (depth != 0 || first.empty())
    throw UsageError("SLURM_JOB_NODELIST='" + nodelist + "' is not a Slurm node list (expected e.g. node[01-04],gpu7)");
  // Each bracket expression contributes its first value: "[03-05,9]" → "03".
  std::string host;
  for (std::size_t i = 0; i < first.size(); ++i) {
    if (first[i] != '[') {
      host += first[i];
      continue;
    }
    const std::size_t close = first.find(']', i);
    const std::string inside = first.substr(i + 1, close - i - 1);
    const std::string value = inside.substr(0, inside.find_first_of(",-"));
    if (value.empty()) throw UsageError("SLURM_JOB_NODELIST='" + nodelist + "': empty range '[" + inside + "]'");
    host += value;
    i = close;
  }
  return host;
}

std::optional<LaunchEnv> read_launch_env(const EnvLookup& env) {
  LaunchEnv e;
  const bool torchrun = env("RANK") || env("WORLD_SIZE");
  const bool slurm = env("SLURM_PROCID") && env("SLURM_NTASKS");
  if (!torchrun && !slurm) return std::nullopt;
  if (torchrun) {
    // env:// semantics: all four are required; a launch missing one must not quietly train alone.
    std::string missing;
    for (const char* v : {"RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"})
      if (!env(v) || env(v)->empty()) missing += std::string(missing.empty() ? "" : ", ") + v;
    if (!missing.empty())
      throw UsageError("env:// rendezvous: " + missing + " not set (RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT are all needed; "
                       "torchrun sets them, e.g. torchrun --no-python --nproc-per-node 2 qtrain RECIPE.yaml)");
    e.launcher = "torchrun";
    e.rank = parse_int("RANK", *env("RANK"));
    e.world_size = parse_int("WORLD_SIZE", *env("WORLD_SIZE"));
    e.local_rank = env("LOCAL_RANK") ? parse_int("LOCAL_RANK", *env("LOCAL_RANK")) : 0;
    e.local_world_size = env("LOCAL_WORLD_SIZE") ? parse_int("LOCAL_WORLD_SIZE", *env("LOCAL_WORLD_SIZE")) : e.local_rank + 1;
    e.master_addr = *env("MASTER_ADDR");
    e.master_port = parse_int("MASTER_PORT", *env("MASTER_PORT"));
    e.agent_store = env("TORCHELASTIC_USE_AGENT_STORE").value_or("") == "True";
    if (auto rc = env("TORCHELASTIC_RESTART_COUNT")) e.restart_count = parse_int("TORCHELASTIC_RESTART_COUNT", *rc);
    check_ranks(e, "RANK", "WORLD_SIZE");
    return e;
  }
  e.launcher = "slurm";
  e.rank = parse_int("SLURM_PROCID", *env("SLURM_PROCID"));
  e.world_size = parse_int("SLURM_NTASKS", *env("SLURM_NTASKS"));
  e.local_rank = env("SLURM_LOCALID") ? parse_int("SLURM_LOCALID", *env("SLURM_LOCALID")) : 0;
  e.local_world_size = leading_count(env("SLURM_NTASKS_PER_NODE")).value_or(
      leading_count(env("SLURM_TASKS_PER_NODE")).value_or(e.local_rank + 1));
  if (auto a = env("MASTER_ADDR"); a && !a->empty()) {
    e.master_addr = *a;
  } else {
    auto list = env("SLURM_JOB_NODELIST");
    if (!list || list->empty()) list = env("SLURM_NODELIST");
    if (!list || list->empty())
      throw UsageError("Slurm launch (SLURM_PROCID, SLURM_NTASKS set) without SLURM_JOB_NODELIST or MASTER_ADDR: "
                       "cannot tell where rank 0 is");
    e.master_addr = first_slurm_host(*list);
  }
  // torch's default port unless the job script exports another (two jobs sharing a node need two).
  e.master_port = env("MASTER_PORT") ? parse_int("MASTER_PORT", *env("MASTER_PORT")) : 29500;
  check_ranks(e, "SLURM_PROCID", "SLURM_NTASKS");
  return e;
}

c10::Device local_cuda_device(const std::optional<LaunchEnv>& env, int64_t visible_devices) {
  const int64_t local = env ? env->local_rank : 0;
  if (visible_devices <= 0) throw UsageError("no CUDA device is visible to this process");
  if (local < visible_devices) return c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(local));
  // Slurm's --gpus-per-task / CUDA_VISIBLE_DEVICES per rank: every task sees its own one device.
  if (visible_devices == 1) return c10::Device(c10::kCUDA, 0);
  throw UsageError("local rank " + std::to_string(local) + " has no CUDA device: this process sees " +
                   std::to_string(visible_devices) + " (launch one rank per GPU: --nproc-per-node " + std::to_string(visible_devices) + ")");
}

c10::Device rank_cuda_device() {
  const auto* impl = c10::impl::getDeviceGuardImpl(c10::kCUDA);
  return local_cuda_device(read_launch_env(), impl->deviceCount());
}

bool launched_as_rank0(const EnvLookup& env) {
  const auto e = read_launch_env(env);
  return !e || e->rank == 0;
}

void wait_for_path(const std::filesystem::path& path, double timeout_s, const std::string& what) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000));
  while (!std::filesystem::exists(path)) {
    if (std::chrono::steady_clock::now() > deadline)
      throw UsageError("waited " + std::to_string(static_cast<int64_t>(timeout_s)) + " s (distributed.timeout) for " + what + " at " +
                       path.string() + ": did rank 0 fail, or is it on another node without a shared file system?");
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

}  // namespace qtrain
