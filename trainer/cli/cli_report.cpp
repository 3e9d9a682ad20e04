// qtrain report RUN_DIR [--out FILE.html]: the run's HTML report (trainer/run_report.h), the same page
// training writes to <output_dir>/report.html when it ends; for a run in progress, an interrupted one,
// or a directory holding only metrics.jsonl.
#include <iostream>

#include "data/error.h"
#include "trainer/cli/cli.h"
#include "trainer/cli/cli_options.h"
#include "trainer/run_report.h"

namespace qtrain::cli {

int run_report(const std::vector<std::string>& args) {
  VerbSpec spec;
  spec.usage = "qtrain report RUN_DIR [--out FILE.html]";
  std::string dir, out;
  spec.options.add_options()("out", po::value(&out), "where to write the page (default: RUN_DIR/report.html)");
  spec.hidden.add_options()("run-dir", po::value(&dir)->required(), "run directory");
  spec.positional.add("run-dir", 1);
  const auto vm = parse_verb(args, spec);
  if (!vm) return 0;
  if (!std::filesystem::is_directory(dir)) throw UsageError("qtrain report: '" + dir + "' is not a directory (expected a run's output_dir)");
  const std::filesystem::path target = out.empty() ? std::filesystem::path(dir) / "report.html" : std::filesystem::path(out);
  write_run_report(dir, target);
  std::cout << target.string() << "\n";
  return 0;
}

}  // namespace qtrain::cli
