// qtrain train RECIPE.yaml [--set key=value]... [--print-config] [--dry-run] [--resume [DIR]]
// (also `qtrain RECIPE.yaml`).
#include <iostream>

#include "data/error.h"
#include "trainer/cli/cli.h"
#include "trainer/cli/cli_options.h"
#include "trainer/cli/quickstart_model.h"
#include "trainer/config.h"
#include "trainer/metrics_log.h"
#include "trainer/recipe_hub.h"
#include "trainer/distributed_env.h"
#include "trainer/run_report.h"
#include "trainer/train.h"

namespace qtrain::cli {

int run_train(const std::vector<std::string>& args) {
  VerbSpec spec;
  spec.usage = "qtrain train RECIPE.yaml [--set key=value]... [--print-config] [--dry-run] [--resume [DIR]]";
  std::string recipe;
  std::vector<std::string> sets;
  std::string resume;
  spec.options.add_options()
      ("set", po::value(&sets)->composing(), "override a recipe value, e.g. --set training.learning_rate=1e-4 (repeatable)")
      ("print-config", "print the resolved recipe (every key, defaults included) and exit")
      ("dry-run", "check the recipe, the model's config, the tokenizer and the data, then exit")
      ("no-plan-check", "train even when the memory plan says the run does not fit the GPU")
      ("resume", po::value(&resume)->implicit_value(""), "continue from the latest checkpoint of output_dir, or from DIR")
      ("quiet", "no progress or evaluation lines (metrics.jsonl and TensorBoard have them); same as --set logging.quiet=true")
      ("log-format", po::value<std::string>(), "text|json: json makes every line of the run's log a JSON object (--set logging.console=json)");
  spec.hidden.add_options()("recipe", po::value(&recipe)->required(), "recipe file");
  spec.positional.add("recipe", 1);
  const auto vm = parse_verb(args, spec);
  if (!vm) return 0;
  if (vm->count("quiet")) sets.push_back("logging.quiet=true");
  if (vm->count("log-format")) sets.push_back("logging.console=" + (*vm)["log-format"].as<std::string>());
  const Recipe written = load_recipe(recipe, sets);
  if (vm->count("print-config")) {
    std::cout << recipe_to_yaml(written);  // as written: printing a recipe never downloads
    return 0;
  }
  // Hub ids (model.path: org/name, hf://datasets/... files) → snapshot paths in the HF cache, before the
  // quick start (which trains its tokenizer on data.files) and before train(); recipe_hash still sees the ids.
  const Recipe r = resolve_hub_ids(written, hub::stderr_log());
  if (r.model.create_if_missing && !std::filesystem::exists(r.model.path)) {
    if (launched_as_rank0()) {  // under torchrun / srun the other ranks wait for rank 0's model
      std::cerr << console_line(r.logging.console == "json", "quickstart: creating a small Llama and its tokenizer in " + r.model.path.string());
      create_quickstart_model(r.model.path, r.data, r.training.seed);
    } else {
      wait_for_path(r.model.path, r.distributed.timeout, "the quickstart model rank 0 creates");
    }
  }
  TrainOptions o;
  o.dry_run = vm->count("dry-run") > 0;
  o.plan_check = vm->count("no-plan-check") == 0;
  if (vm->count("resume")) o.resume = resume.empty() ? r.output_dir : std::filesystem::path(resume);
  const TrainResult res = train(r, o);  // an interrupted run has saved its checkpoint: that too is a clean exit
  if (!o.dry_run && !res.interrupted && launched_as_rank0() && r.export_.format != ExportFormat::kNone) {
    export_after_training(r);
    if (r.logging.report) std::cerr << console_line(r.logging.console == "json", write_run_report_at_end(r.output_dir));  // again, with the export's quality table
  }
  return 0;
}

}  // namespace qtrain::cli
