// qtrain data preview|stats (RECIPE | --model DIR --file F --format FMT [options])
//   preview: the first examples with the trained tokens marked ([[...]] or, on a terminal, green);
//            --ids prints "ids<TAB>trained mask" per example instead (for the chat template oracle).
//   stats:   counts, the token-length histogram, batches per epoch, and the linter's findings.
// A recipe gives the data section and the model; the explicit options build a DataConfig without
// one (a single file), which is also how the oracle tests drive the data pipeline.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>

#include "data/dataset/batching.h"
#include "data/dataset/dataset.h"
#include "data/error.h"
#include "data/tokenizer/tokenizer.h"
#include "trainer/cli/cli.h"
#include "trainer/cli/cli_options.h"
#include "trainer/config.h"

namespace qtrain::cli {
namespace {

struct DataJob {
  DataConfig data;
  std::filesystem::path model;
  int64_t micro_batch_size = 1;
};

DataJob job_from_options(const po::variables_map& vm, const std::string& verb) {
  DataJob job;
  if (vm.count("recipe")) {
    std::vector<std::string> sets;
    if (vm.count("set")) sets = vm["set"].as<std::vector<std::string>>();
    const Recipe r = load_recipe(vm["recipe"].as<std::string>(), sets);
    job.data = r.data;
    job.model = r.model.path;
    job.micro_batch_size = r.training.micro_batch_size;
    if (job.data.cache_dir.empty()) job.data.cache_dir = r.output_dir / "cache";
  } else {
    if (!vm.count("model") || !vm.count("file"))
      throw UsageError("data " + verb + ": give a RECIPE, or --model DIR and --file F (with --format)");
    job.model = vm["model"].as<std::string>();
    for (const auto& f : vm["file"].as<std::vector<std::string>>()) job.data.files.push_back({f, 1.0, std::nullopt});
  }
  // Explicit options refine a recipe too.
  if (vm.count("format")) job.data.format = parse_data_format(vm["format"].as<std::string>(), "--format");
  if (vm.count("template")) job.data.template_name = parse_chat_template_name(vm["template"].as<std::string>(), "--template");
  if (vm.count("train-on")) job.data.train_on = parse_train_on(vm["train-on"].as<std::string>(), "--train-on");
  if (vm.count("on-error")) job.data.on_error = parse_on_error(vm["on-error"].as<std::string>(), "--on-error");
  if (vm.count("max-seq-len")) job.data.max_seq_len = vm["max-seq-len"].as<int64_t>();
  if (vm.count("source-max-len")) job.data.source_max_len = vm["source-max-len"].as<int64_t>();
  if (vm.count("target-max-len")) job.data.target_max_len = vm["target-max-len"].as<int64_t>();
  if (vm.count("cache-dir")) job.data.cache_dir = vm["cache-dir"].as<std::string>();
  if (vm.count("packing")) job.data.packing = true;
  if (vm.count("role-map"))
    for (const auto& m : vm["role-map"].as<std::vector<std::string>>()) {
      const auto eq = m.find('=');
      if (eq == std::string::npos) throw UsageError("--role-map '" + m + "': expected FROM=ROLE, e.g. observation=user");
      job.data.sharegpt_role_map[m.substr(0, eq)] = m.substr(eq + 1);
    }
  return job;
}

void add_common_options(VerbSpec& spec) {
  spec.options.add_options()
      ("set", po::value<std::vector<std::string>>()->composing(), "override a recipe key: --set data.max_seq_len=512")
      ("model", po::value<std::string>(), "model (tokenizer) directory, without a recipe")
      ("file", po::value<std::vector<std::string>>()->composing(), "dataset file (.json, .jsonl, .txt), without a recipe")
      ("format", po::value<std::string>(), "guanaco|alpaca|messages|sharegpt|text")
      ("template", po::value<std::string>(), "auto|llama-2|llama-3|chatml|mistral|plain")
      ("train-on", po::value<std::string>(), "target|assistant|all")
      ("on-error", po::value<std::string>(), "fail|skip")
      ("max-seq-len", po::value<int64_t>(), "cut examples to this many tokens")
      ("source-max-len", po::value<int64_t>(), "QLoRA source limit (0 = none)")
      ("target-max-len", po::value<int64_t>(), "QLoRA target limit (0 = none)")
      ("role-map", po::value<std::vector<std::string>>()->composing(), "ShareGPT role mapping FROM=user|assistant|system")
      ("packing", "pack several examples per row (stats: rows and batches)")
      ("cache-dir", po::value<std::string>(), "token cache directory");
  spec.hidden.add_options()("recipe", po::value<std::string>(), "recipe YAML");
  spec.positional.add("recipe", 1);
}

// Decodes runs of equally-marked tokens; trained runs are bracketed (or coloured on a terminal).
std::string marked_text(const Tokenizer& tok, const ExampleView& ex, bool color) {
  std::string out;
  size_t i = 0;
  while (i < ex.ids.size()) {
    size_t j = i;
    while (j < ex.ids.size() && ex.trained[j] == ex.trained[i]) ++j;
    const std::string text = tok.decode(ex.ids.subspan(i, j - i), /*skip_special=*/false);
    if (ex.trained[i]) out += color ? "\x1b[32m" + text + "\x1b[0m" : "[[" + text + "]]";
    else out += text;
    i = j;
  }
  return out;
}

int run_preview(const std::vector<std::string>& args) {
  VerbSpec spec;
  spec.usage = "qtrain data preview (RECIPE | --model DIR --file F --format FMT) [-n N] [--ids] [options]";
  int64_t n = 3;
  spec.options.add_options()("n,n", po::value(&n)->default_value(3), "how many examples to show (0 = all)")
      ("ids", "print 'ids<TAB>trained-mask' per example instead of text");
  add_common_options(spec);
  const auto vm = parse_verb(args, spec);
  if (!vm) return 0;
  const DataJob job = job_from_options(*vm, "preview");
  const auto tok = load_tokenizer(job.model);
  DataReport report;
  const auto ds = build_dataset(job.data, *tok, job.model, &report);
  const int64_t count = n <= 0 ? ds.train->size() : std::min(n, ds.train->size());
  const bool ids_only = vm->count("ids") > 0;
  const bool color = !ids_only && ::isatty(STDOUT_FILENO);
  std::string out;
  if (!ids_only) out += "template: " + report.template_used + "\n";
  for (int64_t i = 0; i < count; ++i) {
    const auto ex = ds.train->at(i);
    if (ids_only) {
      for (size_t k = 0; k < ex.ids.size(); ++k) out += (k ? " " : "") + std::to_string(ex.ids[k]);
      out += '\t';
      for (uint8_t t : ex.trained) out += t ? '1' : '0';
      out += '\n';
      continue;
    }
    int64_t trained = 0;
    for (uint8_t t : ex.trained) trained += t;
    out += "──── example " + std::to_string(i) + ": " + std::to_string(ex.ids.size()) + " tokens, " +
           std::to_string(trained) + " trained (" + (color ? "green" : "[[in brackets]]") + ")\n";
    out += marked_text(*tok, ex, color) + "\n";
  }
  std::fwrite(out.data(), 1, out.size(), stdout);
  if (!ids_only)
    for (const auto& f : lint(report)) std::cerr << "linter " << f << "\n";
  return 0;
}

// Token-length histogram with power-of-two buckets (lengths span orders of magnitude).
std::string histogram(const ExampleSet& s) {
  std::vector<int64_t> buckets(32, 0);
  int64_t max_len = 0, total = 0;
  for (int64_t i = 0; i < s.size(); ++i) {
    const int64_t len = s.length(i);
    int b = 0;
    while ((int64_t{1} << (b + 1)) <= len) ++b;
    ++buckets[b];
    max_len = std::max(max_len, len);
    total += len;
  }
  const int64_t peak = *std::max_element(buckets.begin(), buckets.end());
  std::string out = "length histogram (tokens; " + std::to_string(s.size()) + " examples, mean " +
                    std::to_string(s.size() ? total / s.size() : 0) + ", max " + std::to_string(max_len) + "):\n";
  for (int b = 0; b < 32; ++b) {
    if (!buckets[b]) continue;
    char line[96];
    std::snprintf(line, sizeof line, "  %7lld-%-7lld %8lld ", static_cast<long long>(int64_t{1} << b),
                  static_cast<long long>((int64_t{2} << b) - 1), static_cast<long long>(buckets[b]));
    out += line + std::string(static_cast<size_t>(50 * buckets[b] / std::max<int64_t>(peak, 1)), '#') + "\n";
  }
  return out;
}

int run_stats(const std::vector<std::string>& args) {
  VerbSpec spec;
  spec.usage = "qtrain data stats (RECIPE | --model DIR --file F --format FMT) [options]";
  add_common_options(spec);
  const auto vm = parse_verb(args, spec);
  if (!vm) return 0;
  const DataJob job = job_from_options(*vm, "stats");
  const auto tok = load_tokenizer(job.model);
  DataReport report;
  const auto t0 = std::chrono::steady_clock::now();
  const auto ds = build_dataset(job.data, *tok, job.model, &report);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::string out = format_report(report);
  char line[128];
  std::snprintf(line, sizeof line, "dataset built in %.3f s\n", secs);
  out += line;
  out += histogram(*ds.train);
  const Loader loader(ds.train, job.micro_batch_size, job.data, job.data.seed, 0, 1);
  out += "batches per epoch (micro_batch_size " + std::to_string(job.micro_batch_size) + ", one rank" +
         (job.data.packing ? ", packed" : "") + "): " + std::to_string(loader.batches_per_epoch()) + "\n";
  std::fwrite(out.data(), 1, out.size(), stdout);
  return 0;
}

}  // namespace

int run_data(const std::vector<std::string>& args) {
  const std::string usage = "usage: qtrain data preview|stats (RECIPE | --model DIR --file F --format FMT) [options]";
  if (args.empty() || args[0] == "--help" || args[0] == "-h") {
    std::cout << usage << "\n  preview  the first examples with trained tokens marked\n"
              << "  stats    counts, length histogram and the linter's findings\n";
    return args.empty() ? static_cast<int>(ExitCode::kUsage) : 0;
  }
  const std::vector<std::string> rest(args.begin() + 1, args.end());
  if (args[0] == "preview") return run_preview(rest);
  if (args[0] == "stats") return run_stats(rest);
  throw UsageError("data: unknown subcommand '" + args[0] + "' (expected preview or stats)");
}

}  // namespace qtrain::cli
