// qtrain plan RECIPE.yaml [--gpu-mem 24GiB] [--set key=value]... [--device cuda|cpu]: the memory plan of a run
// (trainer/memory_plan.h), from the recipe and the model's config.json alone (no weights are read), with what
// fits the given memory: the longest context at the recipe's micro-batch and at 1, the largest micro-batch at
// the recipe's sequence length.
#include <iostream>

#include <ATen/Context.h>

#include "data/error.h"
#include "data/io/hf_config.h"
#include "trainer/cli/cli.h"
#include "trainer/cli/cli_options.h"
#include "trainer/config.h"
#include "trainer/recipe_hub.h"
#include "trainer/memory_plan.h"

#if defined(QTRAIN_WITH_CUDA)
#include <cuda_runtime_api.h>
#endif

namespace qtrain::cli {

int run_plan(const std::vector<std::string>& args) {
  VerbSpec spec;
  spec.usage = "qtrain plan RECIPE.yaml [--gpu-mem 24GiB] [--set key=value]... [--device cuda|cpu]";
  std::string recipe, gpu_mem, device = "cuda";
  std::vector<std::string> sets;
  spec.options.add_options()
      ("gpu-mem", po::value(&gpu_mem), "device memory to plan for (default: this machine's GPU, else 24GiB)")
      ("set", po::value(&sets)->composing(), "override a recipe value, e.g. --set data.max_seq_len=8192 (repeatable)")
      ("device", po::value(&device), "plan for cuda (bf16 compute by default) or cpu (fp32)");
  spec.hidden.add_options()("recipe", po::value(&recipe)->required(), "recipe file");
  spec.positional.add("recipe", 1);
  const auto vm = parse_verb(args, spec);
  if (!vm) return 0;
  if (device != "cuda" && device != "cpu") throw UsageError("--device: expected cuda or cpu, found '" + device + "'");
  // A Hub model: config.json is all a plan reads (the weights are not downloaded).
  const Recipe r = resolve_hub_ids(load_recipe(recipe, sets), hub::stderr_log(), {.model_config_only = true});
  const auto config = r.model.path / "config.json";
  if (!std::filesystem::is_regular_file(config))
    throw UsageError(recipe + ": model.path '" + r.model.path.string() + "' has no config.json to plan from");
  const PlanSettings s = plan_settings(r, parse_model_config(config), device == "cuda");

  double mem = 0;
  std::string mem_from = "--gpu-mem";
  if (!gpu_mem.empty()) {
    mem = parse_bytes(gpu_mem, "--gpu-mem");
  } else {
#if defined(QTRAIN_WITH_CUDA)
    size_t free = 0, total = 0;
    if (at::hasCUDA() && cudaMemGetInfo(&free, &total) == cudaSuccess) mem = static_cast<double>(total), mem_from = "this GPU";
#endif
    if (mem == 0) mem = parse_bytes("24GiB", "--gpu-mem"), mem_from = "default";
  }
  const MemoryPlan p = plan_memory(s, mem);
  std::cout << format_plan(p, s);
  std::cout << "  " << (p.peak <= mem ? "fits" : "does NOT fit") << " in " << human_bytes(mem) << " (" << mem_from << ")\n";
  const int64_t ctx = longest_fitting_context(s, mem);
  PlanSettings one = s;
  one.micro_batch = 1;
  const int64_t ctx1 = longest_fitting_context(one, mem);
  const int64_t batch = largest_fitting_batch(s, mem);
  std::cout << "  longest context at micro-batch " << s.micro_batch << ": " << ctx << " tokens; at micro-batch 1: " << ctx1
            << " tokens\n  largest micro-batch at " << s.seq_len << " tokens: " << batch << "\n";
  if (!s.offload_checkpoints && s.recompute) {
    PlanSettings off = one;
    off.offload_checkpoints = true;
    std::cout << "  with training.offload_checkpoints: " << longest_fitting_context(off, mem) << " tokens at micro-batch 1\n";
  }
  return 0;
}

}  // namespace qtrain::cli
