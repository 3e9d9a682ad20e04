#include "trainer/cli/cli_options.h"

#include <iostream>

#include "data/error.h"

namespace qtrain::cli {

std::optional<po::variables_map> parse_verb(const std::vector<std::string>& args, VerbSpec& spec) {
  spec.options.add_options()("help,h", "show this help");
  po::options_description all;
  all.add(spec.options).add(spec.hidden);
  po::variables_map vm;
  po::store(po::command_line_parser(args).options(all).positional(spec.positional).run(), vm);
  if (vm.count("help")) {
    std::cout << "usage: " << spec.usage << "\n\n" << spec.options << "\n";
    return std::nullopt;
  }
  po::notify(vm);
  return vm;
}

at::ScalarType parse_dtype_option(const std::string& s, const std::string& option) {
  if (s == "float32" || s == "fp32") return at::kFloat;
  if (s == "bfloat16" || s == "bf16") return at::kBFloat16;
  if (s == "float16" || s == "fp16") return at::kHalf;
  throw UsageError("--" + option + " '" + s + "' is not a dtype (expected float32, bfloat16 or float16)");
}

at::Device parse_device_option(const std::string& s, const std::string& option) {
  try {
    at::Device d(s);
    if (d.is_cpu() || d.is_cuda()) return d;
  } catch (const c10::Error&) {
  }
  throw UsageError("--" + option + " '" + s + "' is not a device (expected cpu, cuda or cuda:N)");
}

}  // namespace qtrain::cli
