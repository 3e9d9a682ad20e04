#include "trainer/distributed.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Context.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <thread>

#include "data/error.h"
#include "trainer/distributed_backend.h"

namespace qtrain {
namespace fs = std::filesystem;

namespace {
using Clock = std::chrono::steady_clock;
enum Op { kSum = 0, kMax = 1, kMin = 2 };

std::string first_line(const std::string& s) { return s.substr(0, s.find('\n')); }

std::vector<uint8_t> bytes_of(const std::string& s) { return {s.begin(), s.end()}; }
std::string string_of(const std::vector<uint8_t>& b) { return {b.begin(), b.end()}; }

std::string this_host() {
  char name[256] = {0};
  gethostname(name, sizeof name - 1);
  return name;
}

// A 64-bit digest of the tensors' bits (not their values: -0.0 and 0.0, or two NaNs, differ).
int64_t bit_checksum(const NamedTensors& tensors) {
  uint64_t h = 1469598103934665603ull;
  for (const auto& [name, t] : tensors) {
    at::Tensor c = t.detach().to(at::kCPU).contiguous();
    const at::ScalarType as_int = c.element_size() == 4 ? at::kInt : c.element_size() == 2 ? at::kShort : at::kByte;
    at::Tensor bits = c.view(as_int).reshape({-1}).to(at::kLong);
    // Position-weighted so a permutation changes the digest; int64 sums wrap the same way everywhere.
    at::Tensor w = at::arange(bits.numel(), at::kLong).remainder(65521) + 1;
    const auto s = static_cast<uint64_t>((bits * w).sum().item<int64_t>());
    h = (h ^ s) * 1099511628211ull;
    for (unsigned char ch : name) h = (h ^ ch) * 1099511628211ull;
  }
  return static_cast<int64_t>(h);
}
}  // namespace

struct DataParallel::Group {
  LaunchEnv env;
  at::Device device = at::kCPU;
  std::string backend;
  std::chrono::milliseconds timeout{0};
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> pg;

  std::string me() const { return "rank " + std::to_string(env.rank) + " of " + std::to_string(env.world_size); }

  std::string who(int64_t r) {
    const std::string key = "who/" + std::to_string(r);
    try {
      if (store->check({key})) return " (" + string_of(store->get(key)) + ")";
    } catch (const std::exception&) {
    }
    return "";
  }

  // After a failed collective: which ranks are gone? Every survivor marks itself in the store and
  // closes its connections (peers blocked on it fail now rather than at their timeout); ranks that
  // stay silent for a few seconds are the lost ones. Rank 0 hosts the store (unless torchrun's agent
  // does), so it waits a little longer for the others to read it.
  std::string lost_ranks() {
    pg.reset();
    const auto window = std::min<std::chrono::milliseconds>(timeout / 2, std::chrono::milliseconds(5000));
    std::vector<int64_t> silent;
    try {
      store->set("failed/" + std::to_string(env.rank), bytes_of("1"));
      const auto deadline = Clock::now() + window;
      for (;;) {
        silent.clear();
        for (int64_t r = 0; r < env.world_size; ++r)
          if (r != env.rank && !store->check({"failed/" + std::to_string(r)})) silent.push_back(r);
        if (silent.empty() || Clock::now() > deadline) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
      }
      if (env.rank == 0 && !env.agent_store) std::this_thread::sleep_for(std::chrono::milliseconds(1000));
    } catch (const std::exception&) {
      return env.agent_store ? "the rendezvous store at " + env.where() + " (torchrun's agent) no longer answers"
                             : "lost rank 0 (it hosts the rendezvous store at " + env.where() + ", which no longer answers)";
    }
    if (silent.empty()) return "every rank is still there: a collective timed out (distributed.timeout) or the network failed";
    std::string s = silent.size() == 1 ? "lost rank " : "lost ranks ";
    for (std::size_t i = 0; i < silent.size(); ++i) s += (i ? ", " : "") + std::to_string(silent[i]) + who(silent[i]);
    return s + " (exited, killed or hung)";
  }

  template <class F>
  void run(const std::string& what, F&& op) {
    if (!pg) throw Error(ExitCode::kFailure, me() + ": " + what + ": the process group is gone after an earlier failure");
    try {
      c10::intrusive_ptr<c10d::Work> w = op();
      w->wait();
    } catch (const Error&) {
      throw;
    } catch (const std::exception& e) {
      const std::string lost = lost_ranks();
      throw Error(ExitCode::kFailure, me() + ": " + what + " failed: " + lost + "\n  (" + backend + ": " + first_line(e.what()) + ")");
    }
  }
};

DataParallel::DataParallel() = default;
DataParallel::~DataParallel() = default;

int64_t DataParallel::rank() const { return g_ ? g_->env.rank : 0; }
int64_t DataParallel::world() const { return g_ ? g_->env.world_size : 1; }

std::unique_ptr<DataParallel> DataParallel::join(const Recipe& r, const std::optional<LaunchEnv>& env, at::Device device) {
  auto dp = std::make_unique<DataParallel>();
  const DistributedSection& cfg = r.distributed;
  dp->bucket_bytes_ = std::max<int64_t>(1, static_cast<int64_t>(cfg.bucket_mb * (1 << 20)));
  const int64_t launched = env ? env->world_size : 1;
  if (cfg.world_size > 0 && cfg.world_size != launched)
    throw UsageError(r.source.string() + ": distributed.world_size is " + std::to_string(cfg.world_size) + ", but " +
                     (env ? env->launcher + " started " + std::to_string(launched) + " rank" + (launched == 1 ? "" : "s")
                          : "this is a single process (no RANK/WORLD_SIZE or SLURM_PROCID/SLURM_NTASKS variables): launch it with "
                            "torchrun --no-python --nproc-per-node " + std::to_string(cfg.world_size) + " qtrain ... or srun"));
  if (launched == 1) {
    if (device.is_cuda()) {
      const int64_t n = c10::impl::getDeviceGuardImpl(at::kCUDA)->deviceCount();
      if (n > 1)
        dp->note_ = "note: one process trains on " + device.str() + "; " + std::to_string(n) +
                    " GPUs are visible (torchrun --no-python --nproc-per-node " + std::to_string(n) + " qtrain ... uses them all)";
    }
    return dp;
  }
  const bool nccl = cfg.backend == DistBackend::kNccl || (cfg.backend == DistBackend::kAuto && device.is_cuda());
  if (nccl && !device.is_cuda())
    throw UsageError(r.source.string() + ": distributed.backend: nccl needs training on CUDA (training.device is cpu here); use gloo");
  if (!nccl && device.is_cuda())
    throw UsageError(r.source.string() + ": distributed.backend: gloo carries CPU tensors; training on " + device.str() + " uses nccl");
  if (device.is_cuda()) c10::impl::getDeviceGuardImpl(at::kCUDA)->setDevice(device);

  auto g = std::make_unique<Group>();
  g->env = *env;
  g->device = device;
  g->backend = nccl ? "nccl" : "gloo";
  g->timeout = std::chrono::milliseconds(static_cast<int64_t>(cfg.timeout * 1000));
  char secs_buf[32];
  std::snprintf(secs_buf, sizeof secs_buf, "%g s", cfg.timeout);
  const std::string secs = secs_buf;
  // The store: rank 0 serves it at MASTER_ADDR:MASTER_PORT, unless torchrun's agent already does.
  c10d::TCPStoreOptions so;
  so.port = static_cast<uint16_t>(env->master_port);
  so.isServer = env->rank == 0 && !env->agent_store;
  so.waitWorkers = false;  // counted below, with a message that names the missing ranks
  so.timeout = g->timeout;
  c10::intrusive_ptr<c10d::Store> tcp;
  try {
    tcp = c10::make_intrusive<c10d::TCPStore>(env->master_addr, so);
  } catch (const std::exception& e) {
    const std::string m = e.what();
    if (so.isServer && (m.find("EADDRINUSE") != std::string::npos || m.find("in use") != std::string::npos))
      throw UsageError("rank 0: MASTER_PORT " + std::to_string(env->master_port) + " is already in use on this host (another job, or "
                       "an earlier run still holding it): pick a free port (torchrun --master-port, or export MASTER_PORT)");
    if (so.isServer)
      throw UsageError("rank 0: cannot serve the rendezvous store on port " + std::to_string(env->master_port) + ": " + first_line(m));
    throw UsageError(g->me() + ": cannot reach the rendezvous store at " + env->where() + " within " + secs +
                     " (distributed.timeout): is rank 0 running and MASTER_ADDR right?\n  (" + first_line(m) + ")");
  }
  // Keys of an earlier torchrun attempt (the agent's store outlives workers) are not this attempt's.
  g->store = c10::make_intrusive<c10d::PrefixStore>("qtrain/attempt_" + std::to_string(env->restart_count), tcp);

  // Every rank checks in; WORLD_SIZE larger than the ranks started is an error after the timeout.
  try {
    g->store->set("who/" + std::to_string(env->rank), bytes_of("pid " + std::to_string(getpid()) + " on " + this_host()));
    g->store->add("joined", 1);
    const auto deadline = Clock::now() + g->timeout;
    for (int64_t n = 0; (n = g->store->add("joined", 0)) < env->world_size;) {
      if (Clock::now() > deadline) {
        std::string missing;
        for (int64_t q = 0; q < env->world_size; ++q)
          if (!g->store->check({"who/" + std::to_string(q)})) missing += (missing.empty() ? "" : ", ") + std::to_string(q);
        throw UsageError(g->me() + ": only " + std::to_string(n) + " of " + std::to_string(env->world_size) + " ranks joined at " +
                         env->where() + " within " + secs + " (distributed.timeout); missing: rank " + missing +
                         ". Were fewer processes started than WORLD_SIZE / SLURM_NTASKS says?");
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    throw UsageError(g->me() + ": rendezvous at " + env->where() + " failed: " + first_line(e.what()));
  }
  try {
    g->pg = make_process_group(g->store, static_cast<int>(env->rank), static_cast<int>(env->world_size), nccl, g->timeout);
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    throw UsageError(g->me() + ": cannot connect the " + g->backend + " process group: " + first_line(e.what()));
  }
  dp->note_ = "data parallel: " + std::to_string(env->world_size) + " ranks (" + env->launcher + ", " + g->backend + ", rendezvous " +
              env->where() + ", timeout " + secs + "); global batch = " + std::to_string(env->world_size) + " ranks × " +
              std::to_string(r.training.gradient_accumulation) + " × " + std::to_string(r.training.micro_batch_size);
  dp->g_ = std::move(g);
  return dp;
}

void DataParallel::all_reduce(at::Tensor& t, int op, const std::string& what) {
  c10d::AllreduceOptions o;
  o.reduceOp = op == kSum ? c10d::ReduceOp::SUM : op == kMax ? c10d::ReduceOp::MAX : c10d::ReduceOp::MIN;
  std::vector<at::Tensor> v{t};
  g_->run(what, [&] { return g_->pg->allreduce(v, o); });
}

// Gradients in buckets of about bucket_mb: one collective per bucket instead of one per tensor (a 7B
// model has 448 adapter tensors at r 16), without one flat copy of them all.
void DataParallel::all_reduce_buckets(const std::vector<at::Tensor>& grads) {
  std::size_t i = 0;
  while (i < grads.size()) {
    std::size_t j = i;
    int64_t bytes = 0;
    while (j < grads.size() && grads[j].scalar_type() == grads[i].scalar_type() && (j == i || bytes < bucket_bytes_))
      bytes += grads[j].numel() * grads[j].element_size(), ++j;
    const std::string what = "all-reduce of adapter gradients " + std::to_string(i) + ".." + std::to_string(j - 1);
    if (j == i + 1 && grads[i].is_contiguous()) {
      at::Tensor t = grads[i];
      all_reduce(t, kSum, what);
    } else {
      std::vector<at::Tensor> flat;
      for (std::size_t k = i; k < j; ++k) flat.push_back(grads[k].reshape({-1}));
      at::Tensor bucket = at::cat(flat);
      all_reduce(bucket, kSum, what);
      int64_t off = 0;
      for (std::size_t k = i; k < j; ++k) {
        const int64_t n = grads[k].numel();
        grads[k].view({-1}).copy_(bucket.narrow(0, off, n));
        off += n;
      }
    }
    i = j;
  }
}

StepReduce DataParallel::step_reduce() {
  StepReduce s;
  if (!g_) return s;
  s.counts = [this](at::Tensor& c) { all_reduce(c, kSum, "all-reduce of the step's token / loss sums"); };
  s.grads = [this](const std::vector<at::Tensor>& grads) { all_reduce_buckets(grads); };
  return s;
}

std::function<bool()> DataParallel::within_step(const std::function<bool()>& stop) const {
  if (!g_) return stop;
  return {};
}

bool DataParallel::agree_stop(bool requested, int signal) {
  if (!g_) return requested;
  if (stopped_) return true;
  // The largest signal number any rank received (1 when a rank stops without one).
  at::Tensor f = at::full({1}, requested ? std::max(signal, 1) : 0, at::TensorOptions().dtype(at::kInt).device(g_->device));
  all_reduce(f, kMax, "the stop agreement at the step boundary");
  stop_signal_ = f.item<int>();
  stopped_ = stop_signal_ != 0;
  return stopped_;
}

// A barrier as an all-reduce on the training device, so NCCL synchronises the device this rank uses.
void DataParallel::barrier(const std::string& what) {
  if (!g_) return;
  at::Tensor t = at::zeros({1}, at::TensorOptions().dtype(at::kInt).device(g_->device));
  all_reduce(t, kSum, "barrier (" + what + ")");
  (void)t.item<int>();
}

bool DataParallel::all_ok(bool ok, const std::string& what) {
  at::Tensor t = at::full({1}, ok ? 1 : 0, at::TensorOptions().dtype(at::kInt).device(g_->device));
  all_reduce(t, kMin, what);
  return t.item<int>() != 0;
}

void DataParallel::main_first(const std::string& what, const std::function<void()>& f) {
  if (!g_) return f();
  std::exception_ptr error;
  if (is_main()) {
    try {
      f();
    } catch (...) {
      error = std::current_exception();
    }
  }
  const bool ok = all_ok(!error, "waiting for rank 0: " + what);
  if (error) std::rethrow_exception(error);
  if (!ok) throw Error(ExitCode::kFailure, g_->me() + ": rank 0 failed while " + what + " (its message says why)");
  if (!is_main()) f();
}

void DataParallel::check_identical(const NamedTensors& adapter, const std::string& recipe_hash) {
  if (!g_) return;
  const auto h = static_cast<int64_t>(std::stoull(recipe_hash, nullptr, 16));
  at::Tensor lo = at::tensor({h, bit_checksum(adapter)}, at::kLong).to(g_->device);
  at::Tensor hi = lo.clone();
  all_reduce(lo, kMin, "the recipe / LoRA initialisation check");
  all_reduce(hi, kMax, "the recipe / LoRA initialisation check");
  const at::Tensor same = (lo == hi).cpu();
  if (!same[0].item<bool>())
    throw UsageError(g_->me() + ": the ranks run different recipes (their resolved recipes hash differently): every rank needs "
                     "the same RECIPE, --set options and model");
  if (!same[1].item<bool>())
    throw Error(ExitCode::kFailure, g_->me() + ": the LoRA initialisation differs between ranks although the recipe is the same; "
                                               "the adapters would drift apart");
}

uint64_t DataParallel::dropout_seed(uint64_t seed) const { return seed + static_cast<uint64_t>(rank()) * 0x9E3779B97F4A7C15ull; }

fs::path DataParallel::save_checkpoint(Checkpointer& c, const TrainerState& s, const NamedTensors& adapter, const AdapterInfo& info) {
  if (!g_) return c.save(s, adapter, info);
  // The dropout streams travel through the store: a few KiB per rank, whatever the backend's device.
  const std::string key = "rng/" + std::to_string(s.step) + "/";
  const at::Tensor mine = s.rng_state.to(at::kCPU).contiguous();
  g_->store->set(key + std::to_string(rank()), std::vector<uint8_t>(mine.data_ptr<uint8_t>(), mine.data_ptr<uint8_t>() + mine.numel()));
  const fs::path dir = c.dir() / ("step-" + std::to_string(s.step));
  std::exception_ptr error;
  if (is_main()) {
    try {
      RankStates ranks;
      ranks.world_size = world();
      for (int64_t q = 0; q < world(); ++q) {
        std::vector<uint8_t> b = g_->store->get(key + std::to_string(q));
        ranks.rng.push_back(at::from_blob(b.data(), {static_cast<int64_t>(b.size())}, at::kByte).clone());
        g_->store->deleteKey(key + std::to_string(q));
      }
      c.save(s, adapter, info, ranks);
    } catch (...) {
      error = std::current_exception();
    }
  }
  // Nobody continues (or exits) before the checkpoint is complete on disk.
  const bool ok = all_ok(!error, "waiting for rank 0 to write checkpoint " + dir.string());
  if (error) std::rethrow_exception(error);
  if (!ok) throw Error(ExitCode::kFailure, g_->me() + ": rank 0 could not write checkpoint " + dir.string() + " (its message says why)");
  return dir;
}

at::Tensor DataParallel::resumed_rng(const fs::path& checkpoint, const at::Tensor& rank0_state) {
  const RankStates rs = Checkpointer::load_ranks(checkpoint);
  if (rank() == 0) return rank0_state;
  if (rank() < static_cast<int64_t>(rs.rng.size()) && rs.rng[rank()].numel() == rank0_state.numel()) return rs.rng[rank()];
  // A rank the checkpoint did not have: a stream of its own, derived from rank 0's state.
  at::Tensor bytes = rank0_state.to(at::kCPU).contiguous();
  uint64_t seed = 1469598103934665603ull;
  for (int64_t i = 0; i < bytes.numel(); ++i) seed = (seed ^ bytes.data_ptr<uint8_t>()[i]) * 1099511628211ull;
  seed = dropout_seed(seed);
  if (!g_->device.is_cuda()) return at::make_generator<at::CPUGeneratorImpl>(seed).get_state();
  at::Generator gen = at::globalContext().defaultGenerator(g_->device).clone();
  gen.set_current_seed(seed);
  return gen.get_state();
}

Cursor DataParallel::resumed_cursor(const fs::path& checkpoint, const Cursor& saved, std::shared_ptr<const ExampleSet> data,
                                    int64_t micro_batch_size, const DataConfig& config) {
  const RankStates rs = Checkpointer::load_ranks(checkpoint);
  if (rs.world_size == world()) return saved;
  // Rank r of W took global micro-batches r, r + W, ...: after `position` batches each, the first
  // position·W global micro-batches of the epoch are done, whatever r.
  Loader one(std::move(data), micro_batch_size, config, config.seed, /*rank=*/0, /*world_size=*/1);
  one.restore(Cursor{saved.epoch, 0, saved.seed});
  const int64_t global = one.batches_per_epoch();
  const int64_t done = saved.position * rs.world_size;
  Cursor c = saved;
  int64_t skipped = 0;
  if (done >= global) {
    c.epoch += 1;
    c.position = 0;
  } else {
    c.position = (done + world() - 1) / world();
    skipped = c.position * world() - done;
  }
  std::string n = "resumed on " + std::to_string(world()) + " rank" + (world() == 1 ? "" : "s") + " from a checkpoint of " +
                  std::to_string(rs.world_size) + ": data cursor re-sharded (" + std::to_string(std::min(done, global)) + " of " +
                  std::to_string(global) + " global micro-batches of epoch " + std::to_string(saved.epoch) + " done)";
  if (skipped > 0) n += "; " + std::to_string(skipped) + " micro-batch" + (skipped == 1 ? "" : "es") + " of this epoch skipped so none is trained twice";
  n += "; the optimizer state is the same on every rank and continues as it is";
  if (world() > rs.world_size) n += "; dropout streams of ranks " + std::to_string(rs.world_size) + "+ start afresh";
  note_ += (note_.empty() ? "" : "\n") + n;
  return c;
}

}  // namespace qtrain
