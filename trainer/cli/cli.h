// The qtrain command line: one verb per job (design.md §12). Each verb parses its own options with
// Boost.Program_options and returns the process exit code; errors are thrown as qtrain::Error
// (UsageError → 2, InputError → 3) and turned into a message + exit code by run().
#pragma once

#include <string>
#include <vector>

namespace qtrain {
struct Recipe;
}

namespace qtrain::cli {

// args = argv[1..]. Never throws: prints the error to stderr and returns the exit code.
int run(const std::vector<std::string>& args);

int run_train(const std::vector<std::string>& args);
int run_inspect(const std::vector<std::string>& args);
int run_plan(const std::vector<std::string>& args);
int run_forward(const std::vector<std::string>& args);
int run_tokenize(const std::vector<std::string>& args);
int run_quantize(const std::vector<std::string>& args);
int run_dequantize(const std::vector<std::string>& args);
int run_data(const std::vector<std::string>& args);
int run_export(const std::vector<std::string>& args);
int run_eval(const std::vector<std::string>& args);
int run_generate(const std::vector<std::string>& args);
int run_report(const std::vector<std::string>& args);

// The recipe's export section, run when training has finished (cli_export.cpp).
void export_after_training(const Recipe& r);

}  // namespace qtrain::cli
