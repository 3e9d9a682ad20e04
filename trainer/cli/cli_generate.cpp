// qtrain generate MODEL_DIR [--adapter DIR] (--prompt TEXT | --messages FILE.json | --ids 1,2,3)
//                 [--max-new-tokens N] [--greedy | --temperature T --top-p P --top-k K --seed S] [--print-ids]
// KV-cached decoding (export/generate.h). The prompt is either text (encoded with the special tokens
// the tokenizer adds: BOS for Llama), a conversation rendered with the model's chat template plus the
// assistant cue (apply_chat_template(add_generation_prompt=True), data/dataset/chat_template.h
// render_prompt), or token ids as given.
// stdout: the generated text (special tokens skipped); with --print-ids, then two lines
// "prompt_ids: 1,2,3" and "new_ids: 4,5,6". stderr: one summary line (and the seed when drawn).
#include <chrono>
#include <ctime>
#include <fstream>
#include <iostream>
#include <random>

#include "data/dataset/chat_template.h"
#include "data/dataset/dataset_formats.h"
#include "data/error.h"
#include "data/tokenizer/tokenizer.h"
#include "data/tokenizer/tokenizer_config.h"
#include "data/tokenizer/utf8.h"
#include "export/generate.h"
#include "trainer/cli/cli.h"
#include "trainer/cli/cli_options.h"
#include "trainer/model/lora.h"
#include "trainer/model/model.h"

namespace qtrain::cli {
namespace {
namespace fs = std::filesystem;

std::string join(const std::vector<int64_t>& ids) {
  std::string s;
  for (const int64_t id : ids) s += (s.empty() ? "" : ",") + std::to_string(id);
  return s;
}

// A messages file: [{"role", "content"}, ...] or {"messages": [...]} (one record of the messages
// dataset format, whose reader checks each message), rendered as the whole conversation + the cue
// for the assistant's answer, then tokenized as a chat template's text is (no added specials).
std::vector<int64_t> render_messages(const fs::path& file, const fs::path& model_dir, const std::string& template_spec,
                                     const Tokenizer& tok) {
  nlohmann::ordered_json j;
  try {
    std::ifstream in(file, std::ios::binary);
    if (!in) throw InputError(file.string() + ": cannot read the file");
    j = nlohmann::ordered_json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw InputError(file.string() + ": not valid JSON: " + e.what());
  }
  if (j.is_object() && j.contains("messages")) j = j["messages"];
  if (!j.is_array() || j.empty())
    throw InputError(file.string() + ": expected a list of messages [{\"role\": ..., \"content\": ...}] or {\"messages\": [...]}");
  for (size_t i = 0; i < j.size(); ++i) {
    const auto& m = j[i];
    const std::string role = m.is_object() && m.contains("role") && m["role"].is_string() ? m["role"].get<std::string>() : "";
    if (role != "system" && role != "user" && role != "assistant" && role != "tool")
      throw InputError(file.string() + ": message " + std::to_string(i) + ": role '" + role + "' is not one of: system, user, assistant, tool");
  }
  if (j.back().is_object() && j.back().value("role", "") == "assistant")
    throw InputError(file.string() + ": the last message is the assistant's; generation answers a user turn "
                     "(drop the final assistant message)");
  const std::time_t now_t = std::time(nullptr);
  std::tm now{};
  localtime_r(&now_t, &now);
  const ChatTemplate chat = resolve_chat_template(template_spec, model_dir, nlohmann::ordered_json::object(), now, "--template");
  const std::string text = render_prompt(chat, j, file.string());
  const auto ids = tok.encode(text, /*add_special=*/false);
  return {ids.begin(), ids.end()};
}

bool has_tokenizer(const fs::path& dir) {
  for (const char* f : {"tokenizer.json", "tokenizer.model", "vocab.json"})
    if (fs::exists(dir / f)) return true;
  return false;
}

}  // namespace

int run_generate(const std::vector<std::string>& args) {
  VerbSpec spec;
  spec.usage =
      "qtrain generate MODEL_DIR [--adapter DIR] (--prompt TEXT | --messages FILE.json | --ids 1,2,3) [--max-new-tokens N] "
      "[--greedy | --temperature T --top-p P --top-k K --seed S] [--print-ids] [--dtype D] [--device D] [--quantize nf4|fp4]";
  std::string model, adapter, prompt, messages, id_list, dtype, device, quantize, template_name;
  int64_t max_new_tokens = 0;
  spec.options.add_options()
      ("prompt", po::value(&prompt), "text to continue (tokenized with the tokenizer's BOS)")
      ("messages", po::value(&messages), "a JSON file [{\"role\": \"user\", \"content\": ...}, ...] rendered with the model's chat template")
      ("ids", po::value(&id_list), "comma-separated prompt token ids, e.g. 1 (BOS)")
      ("max-new-tokens", po::value(&max_new_tokens)->default_value(128), "stop after this many new tokens (or at an EOS id of generation_config.json)")
      ("greedy", "always the most likely token (transformers' do_sample=False)")
      ("temperature", po::value<double>(), "sample: divide the logits by T > 0 (default: generation_config.json, else 1)")
      ("top-k", po::value<int64_t>(), "sample among the K most likely tokens, 0 = all (default: generation_config.json, else 50)")
      ("top-p", po::value<double>(), "sample from the smallest top set with probability mass >= P (default: generation_config.json, else 1)")
      ("seed", po::value<uint64_t>(), "sampling seed (default: drawn and printed)")
      ("print-ids", "also print the prompt and new token ids")
      ("template", po::value(&template_name)->default_value("auto"), "chat template for --messages: auto (the model's own)|llama-2|llama-3|chatml|mistral|plain|FILE.jinja")
      ("adapter", po::value(&adapter), "a PEFT LoRA adapter directory to apply")
      ("dtype", po::value(&dtype)->default_value("float32"), "weights and compute dtype: float32, bfloat16, float16")
      ("device", po::value(&device)->default_value("cpu"), "cpu, cuda or cuda:N")
      ("quantize", po::value(&quantize), "quantize the base linears to 4 bits while loading, as training does: nf4 or fp4");
  spec.hidden.add_options()("model", po::value(&model)->required(), "model directory");
  spec.positional.add("model", 1);
  const auto vm = parse_verb(args, spec);
  if (!vm) return 0;

  // Every argument is checked before the model is read.
  const int sources = static_cast<int>(vm->count("prompt") + vm->count("messages") + vm->count("ids"));
  if (sources != 1)
    throw UsageError(std::string(sources == 0 ? "no prompt" : "more than one prompt") +
                     ": give exactly one of --prompt TEXT, --messages FILE.json, --ids 1,2,3");
  std::vector<int64_t> prompt_ids;
  if (vm->count("ids")) prompt_ids = parse_id_list(id_list, "ids");
  {
    bool known = template_name.size() > 6 && template_name.substr(template_name.size() - 6) == ".jinja";
    for (const auto& [e, n] : chat_template_names()) known = known || n == template_name;
    if (!known) parse_chat_template_name(template_name, "--template");  // the UsageError listing the names
  }
  const bool sampling_given = vm->count("temperature") || vm->count("top-k") || vm->count("top-p") || vm->count("seed");
  if (vm->count("greedy") && sampling_given)
    throw UsageError("--greedy takes no --temperature, --top-k, --top-p or --seed (those are for sampling)");
  if (max_new_tokens < 0) throw UsageError("--max-new-tokens must be >= 0, got " + std::to_string(max_new_tokens));
  LoadOptions opts;
  opts.dtype = parse_dtype_option(dtype, "dtype");
  opts.device = parse_device_option(device, "device");
  if (opts.device.is_cuda() && !at::hasCUDA()) throw UsageError("--device " + device + ": no CUDA device is available");
  if (vm->count("quantize")) {
    ops::QuantParams qp;
    if (quantize == "nf4") qp.type = ops::QuantType::kNF4;
    else if (quantize == "fp4") qp.type = ops::QuantType::kFP4;
    else throw UsageError("--quantize '" + quantize + "' must be nf4 or fp4");
    opts.quantize = qp;
  }

  const fs::path dir = resolve_model_arg(model, "model");
  const ModelConfig config = parse_model_config(dir / "config.json");
  GenerateConfig gen = default_generate_config(dir, config);
  gen.max_new_tokens = max_new_tokens;
  SamplingConfig& s = gen.sampling;
  if (vm->count("greedy")) s.greedy = true;
  if (sampling_given) s.greedy = false;
  if (vm->count("temperature")) s.temperature = (*vm)["temperature"].as<double>();
  if (vm->count("top-k")) s.top_k = (*vm)["top-k"].as<int64_t>();
  if (vm->count("top-p")) s.top_p = (*vm)["top-p"].as<double>();
  s.seed = vm->count("seed") ? (*vm)["seed"].as<uint64_t>() : std::random_device{}();
  try {
    validate(gen);
  } catch (const UsageError& e) {
    throw UsageError(std::string(e.what()) + " (from --temperature/--top-k/--top-p, or else " +
                     (dir / "generation_config.json").string() + ")");
  }

  // Without a tokenizer (a bare test model), --ids still works: the output is the ids.
  std::unique_ptr<Tokenizer> tok;
  if (!vm->count("ids") || has_tokenizer(dir)) tok = load_tokenizer(dir);
  if (vm->count("prompt")) {
    const auto ids = tok->encode(prompt, /*add_special=*/true);
    prompt_ids.assign(ids.begin(), ids.end());
  } else if (vm->count("messages")) {
    prompt_ids = render_messages(messages, dir, template_name, *tok);
  }
  if (prompt_ids.empty()) throw UsageError("the prompt is empty after tokenization (the tokenizer adds no BOS): give some text");

  LlamaModel m = LlamaModel::load(dir, opts);
  if (!adapter.empty()) apply_peft_adapter(m, resolve_model_arg(adapter, "adapter"));
  const auto t0 = std::chrono::steady_clock::now();
  const GenerateResult r = generate(m, prompt_ids, gen);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  if (tok) {
    const std::vector<int32_t> ids32(r.tokens.begin(), r.tokens.end());
    // A token may end mid-character (a byte-fallback piece of a longer one): print well-formed text.
    std::cout << utf8::replace_invalid(tok->decode(ids32, /*skip_special=*/true)) << "\n";
  }
  if (vm->count("print-ids") || !tok) std::cout << "prompt_ids: " << join(prompt_ids) << "\nnew_ids: " << join(r.tokens) << "\n";
  std::cerr << "generate: " << prompt_ids.size() << " prompt tokens → " << r.tokens.size() << " new ("
            << (r.stopped_at_eos ? "stopped at EOS" : "max-new-tokens") << ") in " << secs << " s, "
            << (s.greedy ? std::string("greedy")
                         : "sampled: temperature " + std::to_string(s.temperature) + ", top-k " + std::to_string(s.top_k) +
                               ", top-p " + std::to_string(s.top_p) + ", seed " + std::to_string(s.seed))
            << "\n";
  return 0;
}

}  // namespace qtrain::cli
