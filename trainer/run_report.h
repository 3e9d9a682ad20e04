// report.html: one self-contained page that shows a run (inline CSS and SVG; no scripts, fonts or
// fetches, so it opens from a mail attachment or an air-gapped cluster). Built from the run directory
// alone, so `qtrain report RUN_DIR` and the end of training make the same page, for a finished,
// interrupted or resumed run, and for a directory holding only metrics.jsonl:
//   metrics.jsonl              curves (train and eval loss, learning rate, gradient norm, throughput,
//                              memory, held-out accuracy) and the final numbers
//   config.yaml                the recipe (summary + the whole file), the model's config.json
//   data_report.json           counts, length histogram, linter findings (trainer/run_data_report.h)
//   export-*/export_report.json  each export's quality table (export/export_report.h's JSON)
#pragma once

#include <filesystem>
#include <string>

namespace qtrain {

// Throws InputError when run_dir has no metrics.jsonl (naming it); other files are optional and a
// malformed one is shown as such in the page rather than failing it.
std::string run_report_html(const std::filesystem::path& run_dir);

// Writes run_report_html(run_dir) to `out` atomically.
void write_run_report(const std::filesystem::path& run_dir, const std::filesystem::path& out);

// The end of a run: <run_dir>/report.html. Never throws (a report must not fail a finished run);
// returns the line to print: "report: PATH", or a warning saying why it was not written.
std::string write_run_report_at_end(const std::filesystem::path& run_dir);

}  // namespace qtrain
