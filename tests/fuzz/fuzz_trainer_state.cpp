// trainer_state.h5 through its public reader, load_trainer_state (data/io/trainer_state.cpp), so the
// harness does not depend on the file's layout. The input is the file. libhdf5 and libtorch are not
// instrumented (see fuzz_token_cache.cpp). With QTRAIN_FUZZ_MAKE_SEEDS=DIR the binary writes real
// trainer states there through save_trainer_state and exits.
#include "data/io/trainer_state.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

void make_seeds(const std::filesystem::path& dir) {
  std::filesystem::create_directories(dir);
  qtrain::TrainerState s;
  s.step = 7;
  s.tokens = 1234;
  s.cursor_epoch = 1;
  s.cursor_position = 5;
  s.cursor_seed = 42;
  s.total_steps = 100;
  s.recipe_hash = "0123456789abcdef";
  s.optimizer = "adamw_32bit";
  qtrain::save_trainer_state(dir / "no_tensors.h5", s);
  s.rng_state = at::arange(16, at::kByte);
  s.optimizer_state = {{"base_model.layers.0.q_proj.lora_A.exp_avg", at::ones({2, 3}, at::kFloat)},
                       {"base_model.layers.0.q_proj.lora_A.exp_avg_sq", at::full({2, 3}, 0.5, at::kFloat)},
                       {"step", at::zeros({1}, at::kByte)}};
  qtrain::save_trainer_state(dir / "adamw.h5", s);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) { return qtrain::fuzz::make_seeds_if_asked(make_seeds); }

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  namespace fz = qtrain::fuzz;
  const auto file = fz::scratch_dir() / "trainer_state.h5";
  fz::write_file(file, std::string_view(reinterpret_cast<const char*>(data), size));
  fz::expect_clean_errors({file.string()}, [&] {
    const qtrain::TrainerState s = qtrain::load_trainer_state(file);
    // What resume does next: copy the tensors it found.
    if (s.rng_state.defined()) (void)s.rng_state.clone();
    for (const auto& [name, t] : s.optimizer_state) (void)t.sum();
  });
  return 0;
}
