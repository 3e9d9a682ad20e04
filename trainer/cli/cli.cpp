#include "trainer/cli/cli.h"

#include <algorithm>

#include <c10/util/Exception.h>

#include <boost/program_options/errors.hpp>
#include <iostream>
#include <map>

#include "data/error.h"

namespace qtrain::cli {
namespace {

struct Verb {
  const char* name;
  int (*run)(const std::vector<std::string>&);
  const char* summary;
};

// The one table of verbs: dispatch and the help text both come from it.
const Verb kVerbs[] = {
    {"train", run_train, "fine-tune with QLoRA as a recipe says (also: qtrain RECIPE.yaml)"},
    {"plan", run_plan, "predict a run's peak device memory by component, and the longest context / largest batch that fit"},
    {"inspect", run_inspect, "describe a model directory: architecture, parameters, shards, memory in bf16 and NF4"},
    {"forward", run_forward, "run the forward pass on token ids and write the logits to a safetensors file"},
    {"tokenize", run_tokenize, "encode text to token ids (or decode ids) with a model directory's tokenizer"},
    {"quantize", run_quantize, "write a bitsandbytes 4-bit (NF4/FP4) checkpoint that transformers loads"},
    {"dequantize", run_dequantize, "write a dense checkpoint from a 4-bit one"},
    {"export", run_export, "merge a run's adapter into its base and write it merged, as GPTQ or AWQ 4-bit, or as GGUF, with a quality report"},
    {"eval", run_eval, "perplexity / mean token NLL of a model directory (dense, bnb-4bit, GPTQ, AWQ) on a text or instruction dataset"},
    {"generate", run_generate, "generate text with a model directory (and adapter), KV-cached, greedy or sampled"},
    {"report", run_report, "write a run's self-contained HTML report: curves, summary, data report, exports' quality"},
    {"data", run_data, "preview, count or render a dataset as a recipe tokenizes it: qtrain data preview|stats|render RECIPE"},
};

void print_help(std::ostream& os) {
  os << "qtrain " << QTRAIN_VERSION << ": QLoRA fine-tuning of Llama-family models in C++\n\n"
     << "usage: qtrain <verb> [options]      (qtrain <verb> --help for the verb's options)\n\nverbs:\n";
  // The summaries line up one column past the longest verb name.
  std::size_t width = 0;
  for (const auto& v : kVerbs) width = std::max(width, std::string(v.name).size());
  for (const auto& v : kVerbs) os << "  " << v.name << std::string(width + 2 - std::string(v.name).size(), ' ') << v.summary << "\n";
  os << "\nexit codes: 0 ok, 1 failure, 2 usage or config error, 3 bad input data\n";
}

}  // namespace

int run(const std::vector<std::string>& args) {
  try {
    if (args.empty()) {
      print_help(std::cerr);
      return static_cast<int>(ExitCode::kUsage);
    }
    const std::string& verb = args[0];
    if (verb == "--help" || verb == "-h" || verb == "help") {
      print_help(std::cout);
      return 0;
    }
    if (verb == "--version") {
      std::cout << "qtrain " << QTRAIN_VERSION << "\n";
      return 0;
    }
    for (const auto& v : kVerbs)
      if (verb == v.name) return v.run(std::vector<std::string>(args.begin() + 1, args.end()));
    // `qtrain RECIPE.yaml ...` is `qtrain train RECIPE.yaml ...`
    if (verb.size() > 5 && (verb.ends_with(".yaml") || verb.ends_with(".yml"))) return run_train(args);
    std::string names;
    for (const auto& v : kVerbs) names += std::string(names.empty() ? "" : ", ") + v.name;
    throw UsageError("unknown verb '" + verb + "' (verbs: " + names + "; see qtrain --help)");
  } catch (const Error& e) {
    std::cerr << "qtrain: error: " << e.what() << "\n";
    return static_cast<int>(e.code());
  } catch (const boost::program_options::error& e) {
    std::cerr << "qtrain: error: " << e.what() << " (see qtrain " << (args.empty() ? "" : args[0]) << " --help)\n";
    return static_cast<int>(ExitCode::kUsage);
  } catch (const c10::Error& e) {
    std::cerr << "qtrain: error: " << e.what_without_backtrace() << "\n";
    return static_cast<int>(ExitCode::kFailure);
  } catch (const std::exception& e) {
    std::cerr << "qtrain: error: " << e.what() << "\n";
    return static_cast<int>(ExitCode::kFailure);
  }
}

}  // namespace qtrain::cli
