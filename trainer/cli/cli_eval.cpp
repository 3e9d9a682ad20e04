// qtrain eval --model DIR [--adapter DIR] [--reference DIR] --data FILE [--format FMT] [--seq-len N] ... [--out F.json]
// Mean token NLL and perplexity of a model (dense or bnb-4bit, optionally with a PEFT adapter) under one
// of two documented protocols:
//   --format text (default): a text corpus under the GPTQ/AWQ protocol (export/perplexity.h): the file's
//     lines joined by "\n\n" as HF's wikitext rows are, tokenized once with BOS, non-overlapping windows
//     of --seq-len (or sliding windows with --stride < --seq-len), the short tail dropped;
//   --format guanaco|alpaca|messages|sharegpt: the masked target tokens of an instruction dataset, built
//     and batched exactly as training's held-out evaluation does (data/dataset, trainer/evaluate.h).
// Prints the result as JSON on stdout (and a one-line summary on stderr); --out also writes it, atomically.
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <iostream>

#include <nlohmann/json.hpp>

#include "data/dataset/dataset.h"
#include "data/error.h"
#include "data/io/atomic_file.h"
#include "data/tokenizer/tokenizer.h"
#include "export/perplexity.h"
#include "ops/dtype_names.h"
#include "trainer/cli/cli.h"
#include "trainer/cli/cli_options.h"
#include "trainer/evaluate.h"
#include "trainer/model/lora.h"
#include "trainer/model/model.h"

namespace qtrain::cli {
namespace {

using Clock = std::chrono::steady_clock;

constexpr int64_t kPaperSeqLen = 2048;  // GPTQ / AWQ WikiText-2 protocol

std::string fixed(double v, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

// The first max_examples examples of `set` (file order); all of them when max_examples is 0.
std::shared_ptr<const ExampleSet> first_examples(const std::shared_ptr<const ExampleSet>& set, int64_t max_examples) {
  if (max_examples <= 0 || max_examples >= set->size()) return set;
  auto out = std::make_shared<ExampleSet>();
  out->pad_id = set->pad_id;
  for (int64_t i = 0; i < max_examples; ++i) {
    const ExampleView ex = set->at(i);
    out->add(ex.ids, ex.trained);
  }
  return out;
}

}  // namespace

int run_eval(const std::vector<std::string>& args) {
  VerbSpec spec;
  spec.usage =
      "qtrain eval --model DIR [--adapter DIR] [--reference DIR] --data FILE [--format text|guanaco|alpaca|messages|sharegpt]\n"
      "            [--seq-len 2048] [--stride N] [--max-windows N] [--batch-size 1] [--dtype float32] [--device cpu] [--out F.json]";
  std::string model_dir, adapter, reference, data, format, dtype, device, out, template_name, train_on, cache_dir;
  int64_t seq_len = 0, stride = 0, max_windows = 0, max_examples = 0, batch_size = 1;
  spec.options.add_options()
      ("model", po::value(&model_dir)->required(), "model directory (dense or bnb-4bit safetensors, tokenizer)")
      ("adapter", po::value(&adapter), "a PEFT LoRA adapter directory to apply")
      ("reference", po::value(&reference), "text only: a second model (same tokenizer); also reports mean KL(reference || model) per token")
      ("data", po::value(&data)->required(), "text corpus (e.g. wiki.test.raw) or dataset file (.json, .jsonl)")
      ("format", po::value(&format)->default_value("text"),
       "text: corpus perplexity (GPTQ/AWQ protocol); guanaco|alpaca|messages|sharegpt: NLL of the masked target tokens")
      ("seq-len", po::value(&seq_len),
       "text: window length (default 2048, or the model's max_position_embeddings when smaller); datasets: examples are cut to it")
      ("stride", po::value(&stride), "text: window start spacing; < seq-len gives sliding windows scoring only their last STRIDE tokens (default seq-len)")
      ("max-windows", po::value(&max_windows)->default_value(0), "text: score only the first N windows (0 = all)")
      ("max-examples", po::value(&max_examples)->default_value(0), "datasets: score only the first N examples, file order (0 = all)")
      ("batch-size", po::value(&batch_size)->default_value(1), "windows (text) or examples (datasets) per forward pass")
      ("template", po::value(&template_name)->default_value("auto"), "datasets: auto|llama-2|llama-3|chatml|mistral|plain")
      ("train-on", po::value(&train_on)->default_value("target"), "datasets: which tokens are scored: target|assistant|all")
      ("cache-dir", po::value(&cache_dir), "datasets: token cache directory (default ~/.cache/qtrain/data)")
      ("dtype", po::value(&dtype)->default_value("float32"), "weights and compute dtype: float32, bfloat16, float16")
      ("device", po::value(&device)->default_value("cpu"), "cpu, cuda or cuda:N")
      ("out", po::value(&out), "also write the JSON result here (atomically)");
  add_console_options(spec);
  const auto vm = parse_verb(args, spec);
  if (!vm) return 0;
  const ConsoleOptions console = console_options(*vm);

  // Every argument is checked before a model is read.
  const bool text = format == "text";
  const DataFormat data_format = parse_data_format(format, "--format");
  if (batch_size < 1) throw UsageError("--batch-size " + std::to_string(batch_size) + " must be >= 1");
  if (seq_len < 0 || stride < 0 || max_windows < 0 || max_examples < 0)
    throw UsageError("--seq-len, --stride, --max-windows and --max-examples must not be negative");
  if (!text && (stride || max_windows || !reference.empty()))
    throw UsageError("--stride, --max-windows and --reference apply to --format text only (got --format " + format + ")");
  if (text && max_examples) throw UsageError("--max-examples applies to dataset formats; use --max-windows with --format text");
  LoadOptions opts;
  opts.dtype = parse_dtype_option(dtype, "dtype");
  opts.device = parse_device_option(device, "device");
  if (opts.device.is_cuda() && !at::hasCUDA()) throw UsageError("--device " + device + ": no CUDA device is available");
  if (!std::filesystem::is_regular_file(data))
    throw InputError(data + ": " + (std::filesystem::exists(data) ? "not a regular file" : "no such file") +
                     " (--data expects a text corpus or a dataset file)");

  const auto t0 = Clock::now();
  model_dir = resolve_model_arg(model_dir, "model"), adapter = resolve_model_arg(adapter, "adapter"), reference = resolve_model_arg(reference, "reference");
  const auto tok = load_tokenizer(model_dir);
  const ModelConfig config = parse_model_config(std::filesystem::path(model_dir) / "config.json");
  const int64_t max_pos = config.max_position_embeddings;
  if (seq_len == 0) {
    seq_len = std::min(kPaperSeqLen, max_pos);
    if (seq_len != kPaperSeqLen)
      std::cerr << "eval: --seq-len " << seq_len << " (the model's max_position_embeddings"
                << (text ? "; the papers' protocol uses 2048" : "") << ")\n";
  } else if (seq_len > max_pos) {
    throw UsageError("--seq-len " + std::to_string(seq_len) + " is longer than the model's max_position_embeddings (" +
                     std::to_string(max_pos) + ", " + model_dir + "/config.json)");
  }
  if (stride == 0) stride = seq_len;

  nlohmann::ordered_json j;
  j["model"] = model_dir;
  j["adapter"] = adapter.empty() ? nlohmann::ordered_json(nullptr) : nlohmann::ordered_json(adapter);
  j["data"] = data;
  j["format"] = format;
  j["dtype"] = ops::dtype_name(opts.dtype);
  j["device"] = opts.device.str();

  // Windows (text) or examples (datasets) are made before the model is loaded: bad data fails fast.
  TextWindows windows;
  TokenizedDataset ds;
  DataConfig dc;
  DataReport report;
  if (text) {
    windows = make_windows(corpus_ids(*tok, data), seq_len, stride, max_windows);
  } else {
    dc.files = {{data, 1.0, std::nullopt}};
    dc.format = data_format;
    dc.template_name = parse_chat_template_name(template_name, "--template");
    dc.train_on = parse_train_on(train_on, "--train-on");
    dc.max_seq_len = seq_len;
    dc.cache_dir = cache_dir;
    ds = build_dataset(dc, *tok, model_dir, &report, console);
  }

  opts.console = console;
  LlamaModel model = LlamaModel::load(model_dir, opts);
  if (!adapter.empty()) apply_peft_adapter(model, adapter);
  if (text) {
    std::optional<LlamaModel> ref;
    if (!reference.empty()) ref = LlamaModel::load(reference, opts);
    ProgressLine line(console, "eval: " + std::to_string(windows.size()) + " windows of " + std::to_string(windows.seq_len),
                      windows.size(), "windows");
    const NllResult r = window_nll(model, windows, batch_size, ref ? &*ref : nullptr, show_window_progress(line));
    line.finish("", /*transient=*/true);  // the summary line follows
    j["reference"] = reference.empty() ? nlohmann::ordered_json(nullptr) : nlohmann::ordered_json(reference);
    j["protocol"] =
        "corpus lines joined by \"\\n\\n\" (HF wikitext rows), tokenized once with the tokenizer's special tokens; "
        "windows of seq_len every stride tokens, each run alone from position 0; mean NLL over every token but a "
        "window's first (sliding windows: only its last stride tokens); the tail after the last full window dropped";
    j["seq_len"] = windows.seq_len;
    j["stride"] = windows.stride;
    j["windows"] = windows.size();
    j["windows_available"] = windows.available;
    j["corpus_tokens"] = windows.corpus_tokens;
    j["dropped_tail_tokens"] = windows.dropped_tail;
    j["bos"] = tok->bos_id() && windows.ids[0][0].item<int64_t>() == *tok->bos_id();
    j["tokens"] = r.tokens;
    j["nll"] = r.nll;
    j["ppl"] = r.ppl;
    if (ref) j["kl"] = r.kl;
  } else {
    const auto examples = first_examples(ds.train, max_examples);
    const EvalResult r = evaluate(model, examples, batch_size, dc, /*max_batches=*/0, {}, console);
    j["protocol"] =
        "mean CE over the trained (masked target) tokens of each example, built as training builds them "
        "(format, chat template, train_on, cut to max_seq_len), file order, right-padded batches, no packing";
    j["template"] = report.template_used;
    j["train_on"] = to_string(dc.train_on);
    j["max_seq_len"] = dc.max_seq_len;
    j["examples"] = examples->size();
    j["tokens"] = r.tokens;
    j["nll"] = r.loss;
    j["ppl"] = std::exp(r.loss);
    j["token_accuracy"] = r.token_acc;
  }
  j["wall_seconds"] = std::chrono::duration<double>(Clock::now() - t0).count();

  const std::string doc = j.dump(2) + "\n";
  if (!out.empty()) write_file_atomic(out, doc);
  std::cout << doc;
  std::cerr << "eval: ppl " << fixed(j["ppl"].get<double>(), 4) << ", nll " << fixed(j["nll"].get<double>(), 6) << " over "
            << j["tokens"].get<int64_t>() << " tokens"
            << (j.contains("kl") ? ", KL " + fixed(j["kl"].get<double>(), 6) : std::string()) << " in "
            << fixed(j["wall_seconds"].get<double>(), 1) << " s" << (out.empty() ? "" : " → " + out) << "\n";
  return 0;
}

}  // namespace qtrain::cli
