#include "trainer/cli/cli_options.h"

#include <iostream>
#include <sstream>

#include "data/error.h"
#include "data/hub/hub_resolve.h"
#include "ops/dtype_names.h"
#include "trainer/cli/cli_examples.h"

namespace qtrain::cli {

std::optional<po::variables_map> parse_verb(const std::vector<std::string>& args, VerbSpec& spec) {
  spec.options.add_options()("help,h", "show this help");
  po::options_description all;
  all.add(spec.options).add(spec.hidden);
  po::variables_map vm;
  try {
    po::store(po::command_line_parser(args).options(all).positional(spec.positional).run(), vm);
  } catch (const po::too_many_positional_options_error&) {
    // Boost does not say which: name the arguments beyond the verb's positional ones.
    const auto parsed = po::command_line_parser(args).options(all).allow_unregistered().run();
    const auto words = po::collect_unrecognized(parsed.options, po::include_positional);
    std::string extra;
    for (std::size_t i = spec.positional.max_total_count(); i < words.size(); ++i) extra += " '" + words[i] + "'";
    throw UsageError("unexpected argument" + std::string(extra.find("' '") == std::string::npos ? "" : "s") + extra +
                     " (usage: " + spec.usage + ")");
  }
  if (vm.count("help")) {
    std::cout << "usage: " << spec.usage << "\n\n" << spec.options << "\n";
    if (const std::string example = verb_example(spec.usage); !example.empty()) std::cout << "example:\n  " << example << "\n";
    return std::nullopt;
  }
  po::notify(vm);
  return vm;
}

at::ScalarType parse_dtype_option(const std::string& s, const std::string& option) {
  if (const auto t = ops::parse_dtype_or_alias(s)) return *t;
  throw UsageError("--" + option + " '" + s + "' is not a dtype (expected " + std::string(ops::kDtypeNameList) +
                   ", or fp32, bf16, fp16)");
}

std::vector<int64_t> parse_id_list(const std::string& s, const std::string& option) {
  std::vector<int64_t> ids;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    std::size_t used = 0;
    int64_t v = 0;
    try {
      v = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != item.size())
      throw UsageError("--" + option + " '" + s + "': '" + item + "' is not an integer token id (expected e.g. 1,403,407)");
    ids.push_back(v);
  }
  if (ids.empty()) throw UsageError("--" + option + " is empty (expected comma-separated token ids, e.g. 1,403,407)");
  return ids;
}

at::Device parse_device_option(const std::string& s, const std::string& option) {
  try {
    at::Device d(s);
    if (d.is_cpu() || d.is_cuda()) return d;
  } catch (const c10::Error&) {
  }
  throw UsageError("--" + option + " '" + s + "' is not a device (expected cpu, cuda or cuda:N)");
}

void add_console_options(VerbSpec& spec) {
  spec.options.add_options()
      ("quiet", "no progress lines (the result still prints)")
      ("log-format", po::value<std::string>()->default_value("text"), "text|json: json makes every progress line a JSON object");
}

ConsoleOptions console_options(const po::variables_map& vm) {
  const std::string f = vm["log-format"].as<std::string>();
  if (f != "text" && f != "json") throw UsageError("--log-format '" + f + "' must be text or json");
  return {f == "json", vm.count("quiet") > 0};
}

std::string resolve_model_arg(const std::string& arg, const std::string& option) {
  if (arg.empty()) return arg;
  const auto ref = hub::model_ref_for(arg, "--" + option);
  if (!ref) return arg;
  try {
    return hub::resolve_model(*ref, hub::hub_settings_logged(hub::stderr_log()), hub::stderr_log()).string();
  } catch (const Error& e) {
    throw Error(e.code(), "--" + option + " '" + arg + "': " + e.what());
  }
}

}  // namespace qtrain::cli
