// Shared option handling for the verbs: parse with Boost.Program_options, print --help, and turn
// dtype / device strings into typed values at the boundary.
#pragma once

#include <boost/program_options.hpp>
#include <optional>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "data/progress.h"

namespace qtrain::cli {

namespace po = boost::program_options;

struct VerbSpec {
  std::string usage;          // "qtrain forward MODEL_DIR --ids 1,2,3 --out FILE"
  po::options_description options{"options"};
  po::positional_options_description positional;
  po::options_description hidden{"hidden"};  // positional targets
};

// Returns nullopt when --help was printed (the verb then returns 0). Unknown options throw
// po::error, which run() reports as a usage error (exit 2).
std::optional<po::variables_map> parse_verb(const std::vector<std::string>& args, VerbSpec& spec);

at::ScalarType parse_dtype_option(const std::string& s, const std::string& option);  // ops/dtype_names.h, aliases too
// "1,403,407" → {1, 403, 407}; UsageError naming --option for an empty list or an item that is not an integer.
std::vector<int64_t> parse_id_list(const std::string& s, const std::string& option);
at::Device parse_device_option(const std::string& s, const std::string& option);     // cpu|cuda|cuda:N

// --quiet and --log-format text|json for a verb with long phases (eval, export): what its console shows.
void add_console_options(VerbSpec& spec);
ConsoleOptions console_options(const po::variables_map& vm);

// A --model / --adapter / positional MODEL_DIR argument: a local directory as given, or a Hub id
// (org/name[@revision], hf://org/name; the rule in data/hub/hub_resolve.h) fetched into the Hugging Face
// cache (HF_HUB_CACHE, HF_ENDPOINT, HF_TOKEN, HF_HUB_OFFLINE: docs/HUB.md), as its snapshot directory.
// An empty argument stays empty (an optional option not given).
std::string resolve_model_arg(const std::string& arg, const std::string& option);

}  // namespace qtrain::cli
