// trainer_state.h5: everything beside the adapter that a bit-exact resume needs: the optimizer state
// per parameter, the step, the dropout RNG state, the data cursor and the hash of the config that made
// it. HDF5 so any tool (h5py, h5dump) can read it. Written to a temporary name, fsynced and renamed.
// Format 2: attributes for the scalars, datasets optimizer/<i> with a `name` attribute each.
#pragma once

#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>

#include "data/io/named_tensors.h"

namespace qtrain {

struct TrainerState {
  int64_t step = 0;                 // optimizer steps done
  int64_t tokens = 0;               // target tokens trained on so far
  int64_t cursor_epoch = 0, cursor_position = 0;
  uint64_t cursor_seed = 0;
  int64_t total_steps = 0;          // the schedule's horizon when it was written
  at::Tensor rng_state;             // uint8: the dropout generator's state
  std::string rng_device = "cpu";   // the generator's device type: CPU and CUDA states do not mix
  std::string recipe_hash;
  std::string optimizer;            // which optimizer wrote optimizer_state ("adamw_32bit")
  NamedTensors optimizer_state;     // fp32 / uint8 tensors by name, owned by that optimizer
};

void save_trainer_state(const std::filesystem::path& path, const TrainerState& s);
TrainerState load_trainer_state(const std::filesystem::path& path);  // throws InputError naming the file

}  // namespace qtrain
