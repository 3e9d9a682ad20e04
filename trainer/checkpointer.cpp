#include "trainer/checkpointer.h"

#include <algorithm>
#include <regex>
#include <vector>

#include "data/error.h"
#include "data/io/atomic_file.h"
#include "data/io/safetensors.h"

namespace qtrain {
namespace fs = std::filesystem;

namespace {
constexpr const char* kStateFile = "trainer_state.h5";
constexpr const char* kRanksFile = "ranks.safetensors";

bool is_complete(const fs::path& dir) { return fs::is_directory(dir) && fs::exists(dir / kStateFile); }

// Every complete checkpoint under `dir`, oldest first.
std::vector<std::pair<int64_t, fs::path>> list_checkpoints(const fs::path& dir) {
  std::vector<std::pair<int64_t, fs::path>> all;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return all;
  for (const auto& e : fs::directory_iterator(dir))
    if (auto s = checkpoint_step(e.path()); s && is_complete(e.path())) all.emplace_back(*s, e.path());
  std::sort(all.begin(), all.end());
  return all;
}

bool same_path(const fs::path& a, const fs::path& b) { return fs::weakly_canonical(a) == fs::weakly_canonical(b); }
}  // namespace

std::optional<int64_t> checkpoint_step(const fs::path& dir) {
  static const std::regex re("step-([0-9]{1,18})");
  std::smatch m;
  const std::string name = dir.filename().string();
  if (!std::regex_match(name, m, re)) return std::nullopt;
  return std::stoll(m[1]);
}

std::optional<fs::path> latest_checkpoint(const fs::path& checkpoints_dir) {
  auto all = list_checkpoints(checkpoints_dir);
  if (all.empty()) return std::nullopt;
  return all.back().second;
}

Checkpointer::Checkpointer(fs::path run_dir, int64_t keep_last, std::string recipe_hash)
    : run_dir_(std::move(run_dir)), keep_last_(keep_last), recipe_hash_(std::move(recipe_hash)) {}

void Checkpointer::recover_after_crash() const { qtrain::recover_after_crash(dir()); }

void Checkpointer::require_empty() const {
  if (auto latest = latest_checkpoint(dir()))
    throw UsageError(run_dir_.string() + " already holds checkpoints of a run (latest " + latest->filename().string() +
                     "): continue it with --resume, or choose another output_dir (--set output_dir=...)");
}

std::optional<fs::path> Checkpointer::resolve_resume(const fs::path& arg) const {
  fs::path ck = arg;
  if (!is_complete(ck)) {
    auto latest = latest_checkpoint(ck / "checkpoints");
    if (!latest) latest = latest_checkpoint(ck);  // the checkpoints directory itself
    if (!latest) {
      if (same_path(ck, run_dir_)) return std::nullopt;
      throw UsageError("--resume " + arg.string() + ": no checkpoint found (expected a step-N directory with " + kStateFile +
                       ", or a run directory with checkpoints/step-N)");
    }
    ck = *latest;
  }
  if (auto latest = latest_checkpoint(dir())) {
    if (!same_path(ck.parent_path(), dir()))
      throw UsageError("--resume " + ck.string() + ": " + run_dir_.string() + " already holds checkpoints of a run (latest " +
                       latest->filename().string() + "); resume into an empty output_dir (--set output_dir=...)");
    if (!same_path(*latest, ck))
      throw UsageError("--resume " + ck.string() + ": " + latest->string() +
                       " is newer; resume from it, or move the newer checkpoints away first");
  }
  return ck;
}

TrainerState Checkpointer::load(const fs::path& checkpoint, NamedTensors* adapter) const {
  TrainerState s = load_trainer_state(checkpoint / kStateFile);
  if (s.recipe_hash != recipe_hash_)
    throw UsageError(checkpoint.string() + " was written with a different recipe (hash " + s.recipe_hash + ", now " + recipe_hash_ +
                     "); resume needs the same model, data, LoRA and training settings");
  AdapterInfo info;
  *adapter = load_peft_adapter(checkpoint / "adapter", &info);
  return s;
}

fs::path Checkpointer::save(const TrainerState& state, const NamedTensors& adapter, const AdapterInfo& info,
                            const RankStates& ranks) {
  create_directories_durably(dir());
  const fs::path target = dir() / ("step-" + std::to_string(state.step));
  if (!is_complete(target)) {
    AtomicDirectory d(target);
    // Master weights in their own dtype, so a resume continues from exactly these numbers.
    save_peft_adapter(d.path() / "adapter", adapter, info, adapter.empty() ? at::kFloat : adapter.front().second.scalar_type());
    if (ranks.world_size > 1) {
      std::map<std::string, at::Tensor> rng;
      for (std::size_t r = 0; r < ranks.rng.size(); ++r) rng["rng." + std::to_string(r)] = ranks.rng[r];
      safetensors::save(d.path() / kRanksFile, rng, {{"format", "pt"}, {"world_size", std::to_string(ranks.world_size)}});
    }
    save_trainer_state(d.path() / kStateFile, state);  // last: its presence marks the checkpoint complete
    d.commit();
  }
  prune();
  return target;
}

RankStates Checkpointer::load_ranks(const fs::path& checkpoint) {
  RankStates out;
  const fs::path file = checkpoint / kRanksFile;
  if (!fs::exists(file)) return out;
  const auto f = safetensors::File::open(file);
  const auto& meta = f->header().metadata;
  const auto it = meta.find("world_size");
  int64_t world = 0;
  if (it != meta.end()) {
    try {
      world = std::stoll(it->second);
    } catch (const std::exception&) {
      world = 0;
    }
  }
  if (world < 1) throw InputError(file.string() + ": metadata world_size is missing or not a positive integer");
  out.world_size = world;
  for (int64_t r = 0; r < world; ++r) {
    const std::string name = "rng." + std::to_string(r);
    if (!f->contains(name)) throw InputError(file.string() + ": tensor '" + name + "' is missing (world_size " + std::to_string(world) + ")");
    out.rng.push_back(f->tensor(name).clone());
  }
  return out;
}

void Checkpointer::prune() const {
  if (keep_last_ <= 0) return;
  auto all = list_checkpoints(dir());
  // Renamed out of the step-N names before the delete: a crash half-way never leaves a partial
  // checkpoint under a name that looks complete.
  for (std::size_t i = 0; i + keep_last_ < all.size(); ++i) remove_directory_durably(all[i].second);
}

}  // namespace qtrain
