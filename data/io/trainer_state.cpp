#include "data/io/trainer_state.h"

#include "data/error.h"
#include "data/io/atomic_file.h"
#include "data/io/hdf5.h"

namespace qtrain {
namespace fs = std::filesystem;

namespace {
constexpr int64_t kFormatVersion = 2;
constexpr const char* kRoot = "/";
// More optimizer tensors than this is not a checkpoint of a LoRA run (a 70B model with every linear
// targeted has ~1,100 adapter tensors, times a few state tensors each).
constexpr int64_t kMaxOptimizerTensors = int64_t{1} << 20;
}  // namespace

void save_trainer_state(const fs::path& path, const TrainerState& s) {
  AtomicFilePath out(path);
  {
    hdf5::File f = hdf5::File::create(out.path());
    f.write_attribute(kRoot, "format_version", kFormatVersion);
    f.write_attribute(kRoot, "step", s.step);
    f.write_attribute(kRoot, "tokens", s.tokens);
    f.write_attribute(kRoot, "cursor_epoch", s.cursor_epoch);
    f.write_attribute(kRoot, "cursor_position", s.cursor_position);
    f.write_attribute(kRoot, "cursor_seed", static_cast<int64_t>(s.cursor_seed));
    f.write_attribute(kRoot, "total_steps", s.total_steps);
    f.write_attribute(kRoot, "recipe_hash", s.recipe_hash);
    if (s.rng_state.defined()) f.write_tensor("rng_state", s.rng_state);
    f.write_attribute(kRoot, "rng_device", s.rng_device);
    f.write_attribute(kRoot, "optimizer", s.optimizer);
    f.write_attribute(kRoot, "num_optimizer_tensors", static_cast<int64_t>(s.optimizer_state.size()));
    for (std::size_t i = 0; i < s.optimizer_state.size(); ++i) {
      const std::string d = "optimizer/" + std::to_string(i);
      f.write_tensor(d, s.optimizer_state[i].second);
      f.write_attribute(d, "name", s.optimizer_state[i].first);
    }
    f.close();
  }
  out.commit();  // fsync, rename into place, fsync the directory
}

TrainerState load_trainer_state(const fs::path& path) {
  if (!fs::exists(path)) throw InputError(path.string() + ": no trainer state (is this a qtrain checkpoint?)");
  const hdf5::File f = hdf5::File::open(path);
  const std::string p = path.string();
  if (const int64_t v = f.read_int64_attribute(kRoot, "format_version"); v != kFormatVersion)
    throw InputError(p + ": trainer_state format_version " + std::to_string(v) +
                     (v == 1 ? " was written by an earlier qtrain (before the optimizer owned its state): start the run again"
                             : " is unknown (this qtrain reads version 2)"));
  TrainerState s;
  s.step = f.read_int64_attribute(kRoot, "step");
  s.tokens = f.read_int64_attribute(kRoot, "tokens");
  s.cursor_epoch = f.read_int64_attribute(kRoot, "cursor_epoch");
  s.cursor_position = f.read_int64_attribute(kRoot, "cursor_position");
  s.cursor_seed = static_cast<uint64_t>(f.read_int64_attribute(kRoot, "cursor_seed"));
  s.total_steps = f.read_int64_attribute(kRoot, "total_steps");
  if (s.step < 0 || s.tokens < 0 || s.cursor_epoch < 0 || s.cursor_position < 0 || s.total_steps < 0)
    throw InputError(p + ": negative step, token count, data cursor or total_steps");
  s.recipe_hash = f.read_string_attribute(kRoot, "recipe_hash");
  if (f.has("rng_state")) {
    s.rng_state = f.read_tensor("rng_state");
    if (s.rng_state.scalar_type() != at::kByte || s.rng_state.dim() != 1)
      throw InputError(p + ": rng_state must be a 1-D uint8 dataset, found " + c10::toString(s.rng_state.scalar_type()) +
                       c10::str(s.rng_state.sizes()));
  }
  s.rng_device = f.read_string_attribute(kRoot, "rng_device");
  if (s.rng_device != "cpu" && s.rng_device != "cuda")
    throw InputError(p + ": rng_device is '" + s.rng_device + "', expected cpu or cuda");
  s.optimizer = f.read_string_attribute(kRoot, "optimizer");
  const int64_t n = f.read_int64_attribute(kRoot, "num_optimizer_tensors");
  if (n < 0 || n > kMaxOptimizerTensors)
    throw InputError(p + ": num_optimizer_tensors " + std::to_string(n) + " is out of range [0, " +
                     std::to_string(kMaxOptimizerTensors) + "]");
  for (int64_t i = 0; i < n; ++i) {
    const std::string d = "optimizer/" + std::to_string(i);
    at::Tensor t = f.read_tensor(d);
    s.optimizer_state.emplace_back(f.read_string_attribute(d, "name"), std::move(t));
  }
  return s;
}

}  // namespace qtrain
