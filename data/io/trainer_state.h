// trainer_state.h5: everything beside the adapter that a bit-exact resume needs: the optimizer state
// per parameter, the step, the dropout RNG state, the data cursor and the hash of the config that made
// it. HDF5 so any tool (h5py, h5dump) can read it. Written to a temporary name and renamed.
#pragma once

#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>

namespace qtrain {

struct ParamState {
  std::string name;       // the adapter tensor name (PEFT file name)
  at::Tensor exp_avg;     // fp32, like the parameter
  at::Tensor exp_avg_sq;  // fp32, like the parameter
};

struct TrainerState {
  int64_t step = 0;                 // optimizer steps done
  int64_t tokens = 0;               // target tokens trained on so far
  int64_t cursor_epoch = 0, cursor_position = 0;
  uint64_t cursor_seed = 0;
  at::Tensor rng_state;             // uint8: the dropout generator's state
  std::string recipe_hash;
  std::vector<ParamState> optimizer;
};

void save_trainer_state(const std::filesystem::path& path, const TrainerState& s);
TrainerState load_trainer_state(const std::filesystem::path& path);  // throws InputError naming the file

}  // namespace qtrain
