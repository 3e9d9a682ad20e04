// qtrain data preview|stats (RECIPE | --model DIR --file F --format FMT [options])
//   render:  qtrain data render TEMPLATE --messages FILE.json: a conversation through a chat template
//            (a model directory's own, or a .jinja file), printed exactly as transformers'
//            apply_chat_template(tokenize=False) renders it; --batch FILE.jsonl renders many (one JSON
//            object per line in, one per line out: {"text": ...} or {"error": ..., "raised": ...}).
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

#include <ctime>
#include <fstream>
#include <sstream>

#include "data/dataset/batching.h"
#include "data/dataset/chat_render.h"
#include "data/dataset/dataset.h"
#include "data/error.h"
#include "data/tokenizer/tokenizer.h"
#include "data/tokenizer/utf8.h"
#include "trainer/cli/cli.h"
#include "trainer/cli/cli_options.h"
#include "trainer/config.h"
#include "trainer/recipe_hub.h"

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
    const Recipe r = resolve_hub_ids(load_recipe(vm["recipe"].as<std::string>(), sets), hub::stderr_log());
    job.data = r.data;
    job.model = r.model.path;
    job.micro_batch_size = r.training.micro_batch_size;
    if (job.data.cache_dir.empty()) job.data.cache_dir = r.output_dir / "cache";
  } else {
    if (!vm.count("model") || !vm.count("file"))
      throw UsageError("data " + verb + ": give a RECIPE, or --model DIR and --file F (with --format)");
    job.model = resolve_model_arg(vm["model"].as<std::string>(), "model");
    for (const auto& f : vm["file"].as<std::vector<std::string>>()) job.data.files.push_back({f, 1.0, std::nullopt});
  }
  // Explicit options refine a recipe too.
  if (vm.count("format")) job.data.format = parse_data_format(vm["format"].as<std::string>(), "--format");
  if (vm.count("template")) {
    job.data.chat_template = vm["template"].as<std::string>();
    for (const auto& [key, msg] : data_config_problems(job.data))
      if (key == "chat_template") throw UsageError("--template: " + msg);
  }
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
      ("template", po::value<std::string>(), "auto (the model's own)|llama-2|llama-3|chatml|mistral|plain|FILE.jinja")
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
    // A mask boundary can fall inside a character (byte-fallback pieces): show well-formed text.
    const std::string text = utf8::replace_invalid(tok.decode(ex.ids.subspan(i, j - i), /*skip_special=*/false));
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

// NAME=VALUE: VALUE as JSON when it parses (false, 3, "text", [1]), otherwise as a string.
std::pair<std::string, nlohmann::ordered_json> parse_var(const std::string& s) {
  const auto eq = s.find('=');
  if (eq == std::string::npos || eq == 0) throw UsageError("--var '" + s + "': expected NAME=VALUE, e.g. enable_thinking=false");
  const std::string value = s.substr(eq + 1);
  nlohmann::ordered_json v = nlohmann::ordered_json::parse(value, nullptr, /*allow_exceptions=*/false);
  if (v.is_discarded()) v = value;
  return {s.substr(0, eq), v};
}

std::string read_file_text(const std::string& path, const std::string& option) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw UsageError(option + " " + path + ": cannot read the file");
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// A conversation file: a list of messages, or {"messages": [...], "tools": [...]}.
ChatInput chat_input_from_json(const nlohmann::ordered_json& j, const std::string& where) {
  ChatInput in;
  if (j.is_array()) {
    in.messages = j;
  } else if (j.is_object() && j.contains("messages")) {
    in.messages = j["messages"];
    if (j.contains("tools")) in.tools = j["tools"];
    if (j.contains("add_generation_prompt")) in.add_generation_prompt = j["add_generation_prompt"].get<bool>();
  } else {
    throw InputError(where + ": expected a list of messages or an object with \"messages\"");
  }
  if (!in.messages.is_array()) throw InputError(where + ": \"messages\" must be a list");
  return in;
}

int run_render(const std::vector<std::string>& args) {
  VerbSpec spec;
  spec.usage = "qtrain data render TEMPLATE (--messages FILE.json | --batch FILE.jsonl) [--add-generation-prompt] [--var NAME=VALUE]... [--now 2025-03-14T09:26:53]";
  spec.options.add_options()
      ("messages", po::value<std::string>(), "a JSON list of {role, content, ...} messages (or {\"messages\": [...], \"tools\": [...]})")
      ("batch", po::value<std::string>(), "JSON lines {\"messages\", \"tools\"?, \"add_generation_prompt\"?, \"vars\"?}: one JSON result per line")
      ("add-generation-prompt", "end with the cue for the assistant's answer")
      ("var", po::value<std::vector<std::string>>()->composing(), "an extra template variable NAME=VALUE (VALUE as JSON when it parses)")
      ("now", po::value<std::string>(), "the time strftime_now sees (default: now, local time)");
  spec.hidden.add_options()("template", po::value<std::string>(), "model directory or .jinja file");
  spec.positional.add("template", 1);
  const auto vm = parse_verb(args, spec);
  if (!vm) return 0;
  if (!vm->count("template")) throw UsageError("data render: give a TEMPLATE (a model directory or a .jinja file)");
  if (vm->count("messages") == vm->count("batch")) throw UsageError("data render: give one of --messages FILE.json or --batch FILE.jsonl");
  const std::filesystem::path tpath = (*vm)["template"].as<std::string>();
  TemplateSource source;
  std::map<std::string, std::string> special;
  if (std::filesystem::is_directory(tpath)) {
    auto found = find_model_template(tpath);
    if (!found) throw InputError(tpath.string() + ": the model has no chat template (no chat_template.jinja, no chat_template in tokenizer_config.json)");
    source = *found;
    special = read_special_tokens(tpath);
  } else {
    source = read_template_file(tpath);
  }
  const jinja::Template tmpl(source.text, source.origin);
  nlohmann::ordered_json vars = nlohmann::ordered_json::object();
  if (vm->count("var"))
    for (const auto& v : (*vm)["var"].as<std::vector<std::string>>()) {
      auto [name, value] = parse_var(v);
      vars[name] = value;
    }
  std::tm now{};
  if (vm->count("now")) {
    now = jinja::parse_timestamp((*vm)["now"].as<std::string>(), "--now");
  } else {
    const std::time_t t = std::time(nullptr);
    localtime_r(&t, &now);
  }
  const bool gen = vm->count("add-generation-prompt") > 0;
  if (vm->count("messages")) {
    const std::string file = (*vm)["messages"].as<std::string>();
    nlohmann::ordered_json j;
    try {
      j = nlohmann::ordered_json::parse(read_file_text(file, "--messages"));
    } catch (const nlohmann::json::exception& e) {
      throw InputError(file + ": not valid JSON: " + e.what());
    }
    ChatInput in = chat_input_from_json(j, file);
    in.add_generation_prompt = in.add_generation_prompt || gen;
    const auto r = tmpl.render(chat_template_vars(in, special, vars, file), now);
    std::fwrite(r.text.data(), 1, r.text.size(), stdout);
    return 0;
  }
  const std::string file = (*vm)["batch"].as<std::string>();
  std::istringstream lines(read_file_text(file, "--batch"));
  std::string line, out;
  for (int64_t n = 1; std::getline(lines, line); ++n) {
    if (line.empty()) continue;
    const std::string where = file + ":" + std::to_string(n);
    nlohmann::ordered_json j;
    try {
      j = nlohmann::ordered_json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      throw InputError(where + ": not valid JSON: " + e.what());
    }
    ChatInput in = chat_input_from_json(j, where);
    in.add_generation_prompt = in.add_generation_prompt || gen;
    nlohmann::ordered_json line_vars = vars;
    if (j.is_object() && j.contains("vars") && j["vars"].is_object())
      for (auto it = j["vars"].begin(); it != j["vars"].end(); ++it) line_vars[it.key()] = it.value();
    nlohmann::ordered_json result;
    try {
      result["text"] = tmpl.render(chat_template_vars(in, special, line_vars, where), now).text;
    } catch (const jinja::TemplateRaised& e) {
      result["error"] = e.raised();
      result["raised"] = true;
    } catch (const jinja::TemplateError& e) {
      result["error"] = e.what();
      result["raised"] = false;
    }
    out += result.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  }
  std::fwrite(out.data(), 1, out.size(), stdout);
  return 0;
}

}  // namespace

int run_data(const std::vector<std::string>& args) {
  const std::string usage = "usage: qtrain data preview|stats (RECIPE | --model DIR --file F --format FMT) [options]\n"
                            "       qtrain data render TEMPLATE --messages FILE.json [--add-generation-prompt] [--var NAME=VALUE]... [--now TIME]";
  if (args.empty() || args[0] == "--help" || args[0] == "-h") {
    std::cout << usage << "\n  preview  the first examples with trained tokens marked\n"
              << "  stats    counts, length histogram and the linter's findings\n"
              << "  render   a conversation through a chat template, exactly as transformers renders it\n";
    return args.empty() ? static_cast<int>(ExitCode::kUsage) : 0;
  }
  const std::vector<std::string> rest(args.begin() + 1, args.end());
  if (args[0] == "preview") return run_preview(rest);
  if (args[0] == "stats") return run_stats(rest);
  if (args[0] == "render") return run_render(rest);
  throw UsageError("data: unknown subcommand '" + args[0] + "' (expected preview, stats or render)");
}

}  // namespace qtrain::cli
