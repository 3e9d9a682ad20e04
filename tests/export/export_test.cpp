// The export pipeline: merge (exact, into the dequantized NF4 base), calibration sets, the
// layer-by-layer GPTQ/RTN driver, and `qtrain export` end to end on the shared trained tiny Llama
// (GPTQ must beat RTN in its report) and on bad input.
#include <gtest/gtest.h>

#include <ATen/CPUGeneratorImpl.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <random>

#include <nlohmann/json.hpp>

#include "data/error.h"
#include "data/io/gptq_format.h"
#include "data/io/model_writer.h"
#include "data/io/safetensors.h"
#include "export/calibration.h"
#include "export/export_model.h"
#include "export/merge.h"
#include "export/quantize_model.h"
#include "tests/cli_run.h"
#include "tests/scratch_dir.h"

namespace qtrain {
namespace {
namespace fs = std::filesystem;
using test_tools::run_qtrain;

uint64_t fresh_seed() {
  const uint64_t seed = std::random_device{}();
  std::cout << "[ seed ] " << seed << "\n";  // rerun a failure with this seed in the generator below
  return seed;
}

fs::path shared_model() { return fs::path(QTRAIN_SHARED_DATA) / "models/llama2c-xs-tok512-hf"; }
fs::path shared_text() { return fs::path(QTRAIN_SHARED_DATA) / "corpus/wikitext-2-raw/wiki.test.raw"; }

// Adapters with random A and B on every linear (PEFT initialises B = 0, which would merge nothing).
void add_random_lora(LlamaModel& m, uint64_t seed, double scale_b = 0.05) {
  LoraSpec spec;
  spec.config.rank = 4;
  spec.config.alpha = 8;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  m.add_lora(spec, gen);
  at::NoGradGuard ng;
  for (auto& [name, p] : m.lora_parameters())
    if (name.find("lora_B") != std::string::npos) p.normal_(0, scale_b, gen);
}

LlamaModel load_nf4(const fs::path& dir) {
  LoadOptions lo;
  lo.quantize = ops::QuantParams{};
  return LlamaModel::load(dir, lo);
}

// --- merge ---------------------------------------------------------------------------------------

TEST(Merge, WeightIsDequantizedBasePlusScaledBA) {
  const uint64_t seed = fresh_seed();
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  // Awkward shape: neither dimension a power of two; 4-bit blocks cross rows (in = 72, blocksize 64).
  const int64_t out = 40, in = 72, r = 3;
  const at::Tensor w = at::randn({out, in}, gen);
  Linear l;
  l.qweight = ops::quantize_4bit(w, ops::QuantParams{});
  l.lora = std::make_shared<LoraAdapter>();
  l.lora->A = at::randn({r, in}, gen);
  l.lora->B = at::randn({out, r}, gen);
  l.lora->scale = 2.5;
  // The reference in float64 from the dequantized weight (the adapter was trained against it).
  const at::Tensor expect = ops::dequantize_4bit(*l.qweight, at::kFloat).to(at::kDouble) +
                            2.5 * at::matmul(l.lora->B.to(at::kDouble), l.lora->A.to(at::kDouble));
  MergeLayerStat st;
  const at::Tensor got = merged_weight(l, &st);
  ASSERT_EQ(got.scalar_type(), at::kFloat);
  // float32 rounding of one r-term dot product and one add: a few ulp of the entries (|W'| ~ 10).
  EXPECT_LT((got.to(at::kDouble) - expect).abs().max().item<double>(), 1e-5);
  // Negative control: the original weight is not what the adapter is merged into.
  EXPECT_GT((got.to(at::kDouble) - (w.to(at::kDouble) + 2.5 * at::matmul(l.lora->B.to(at::kDouble), l.lora->A.to(at::kDouble))))
                .abs().max().item<double>(), 1e-2);
  EXPECT_GT(st.delta_norm, 0);
  EXPECT_NEAR(st.weight_norm, ops::dequantize_4bit(*l.qweight, at::kFloat).norm().item<double>(), 1e-3);

  MergeLayerStat s2 = merge_linear("x", l, at::kFloat);
  EXPECT_FALSE(l.qweight.has_value());
  EXPECT_FALSE(l.lora);
  EXPECT_TRUE(at::equal(l.weight, got));
  EXPECT_DOUBLE_EQ(s2.ratio(), st.ratio());
}

// The merged model computes the NF4 + LoRA model's function: in float32 the two differ only by the
// reassociation x·(W + sBA)ᵀ vs x·Wᵀ + s(x·Aᵀ)·Bᵀ, float32 rounding of sums of ~200 terms through 5
// layers: observed ~1e-6 relative; bound 1e-4 of the logit scale.
TEST(Merge, MergedModelMatchesNf4PlusLora) {
  if (!fs::exists(shared_model() / "config.json")) GTEST_SKIP() << "shared test data not found at " << shared_model();
  const uint64_t seed = fresh_seed();
  LlamaModel trained = load_nf4(shared_model());
  add_random_lora(trained, seed);
  LlamaModel merged = load_nf4(shared_model());
  add_random_lora(merged, seed);
  const auto stats = merge_adapters(merged);
  EXPECT_EQ(stats.size(), 35u);  // 7 linears × 5 layers
  at::NoGradGuard ng;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  const at::Tensor ids = at::randint(0, 512, {2, 33}, gen);
  const at::Tensor a = trained.forward(ids), b = merged.forward(ids);
  const double scale = a.abs().max().item<double>();
  EXPECT_LT((a - b).abs().max().item<double>(), 1e-4 * scale);
  // Negative control: without the adapter the function differs by far more than the bound.
  LlamaModel base = load_nf4(shared_model());
  EXPECT_GT((base.forward(ids) - b).abs().max().item<double>(), 1e-2 * scale);
}

// --- calibration ---------------------------------------------------------------------------------

ExampleSet toy_examples(int64_t n) {
  ExampleSet s;
  for (int64_t i = 0; i < n; ++i) {
    std::vector<int32_t> ids;
    std::vector<uint8_t> trained;
    for (int64_t t = 0; t < 5 + i; ++t) {
      ids.push_back(static_cast<int32_t>(i * 100 + t));
      trained.push_back(t >= 3);  // a 3-token prompt, then the trained response
    }
    s.add(ids, trained);
  }
  return s;
}

TEST(Calibration, ExamplesSeededTruncatedAndCounted) {
  const ExampleSet data = toy_examples(10);
  CalibrationOptions o;
  o.samples = 4;
  o.length = 8;
  o.seed = 3;
  const CalibrationSet a = calibration_from_examples(data, o, "toy"), b = calibration_from_examples(data, o, "toy");
  ASSERT_EQ(a.ids.size(), 4u);
  for (size_t i = 0; i < a.ids.size(); ++i) {
    EXPECT_TRUE(at::equal(a.ids[i], b.ids[i]));  // same seed, same sequences
    EXPECT_LE(a.ids[i].size(1), 8);
    EXPECT_EQ(a.counts[i].sum().item<int64_t>(), a.ids[i].size(1));  // every position counts by default
  }
  o.seed = 4;
  const CalibrationSet c = calibration_from_examples(data, o, "toy");
  bool differs = false;
  for (size_t i = 0; i < a.ids.size(); ++i) differs |= !at::equal(a.ids[i], c.ids[i]) || a.ids[i].sizes() != c.ids[i].sizes();
  EXPECT_TRUE(differs) << "another seed picks other examples";

  // Trained only: position t counts when token t+1 is trained (t = 2 .. len-2 here).
  o.trained_only = true;
  const CalibrationSet t = calibration_from_examples(data, o, "toy");
  for (size_t i = 0; i < t.ids.size(); ++i) {
    const int64_t len = t.ids[i].size(1);
    const auto* counts = t.counts[i].data_ptr<bool>();
    for (int64_t p = 0; p < len; ++p) EXPECT_EQ(counts[p], p >= 2 && p + 1 < len) << "position " << p << " of " << len;
  }
}

TEST(Calibration, TextWindowsAndErrors) {
  std::vector<int64_t> ids(100);
  for (int64_t i = 0; i < 100; ++i) ids[i] = i;
  CalibrationOptions o;
  o.samples = 5;
  o.length = 30;
  const CalibrationSet s = calibration_from_tokens(ids, o, "corpus");
  ASSERT_EQ(s.ids.size(), 5u);
  EXPECT_EQ(s.tokens(), 150);
  for (const auto& w : s.ids) {  // contiguous windows inside the corpus
    const int64_t first = w[0][0].item<int64_t>();
    EXPECT_TRUE(at::equal(w[0], at::arange(first, first + 30, at::kLong)));
  }
  o.length = 101;
  EXPECT_THROW(calibration_from_tokens(ids, o, "corpus"), InputError);
  ExampleSet empty;
  empty.add(std::vector<int32_t>{1}, std::vector<uint8_t>{1});
  EXPECT_THROW(calibration_from_examples(empty, CalibrationOptions{}, "one-token"), InputError);
}

// --- layer-by-layer quantization -----------------------------------------------------------------

class QuantizeModel : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!fs::exists(shared_model() / "config.json")) GTEST_SKIP() << "shared test data not found at " << shared_model();
    std::vector<int64_t> ids;
    auto gen = at::make_generator<at::CPUGeneratorImpl>(7);
    // Token statistics of real text matter little for this check; windows of the model's own
    // vocabulary drawn uniformly keep it independent of the tokenizer.
    const at::Tensor t = at::randint(0, 512, {4096}, gen);
    ids.assign(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + t.numel());
    CalibrationOptions o;
    o.samples = 8;
    o.length = 64;
    calib_ = calibration_from_tokens(ids, o, "random ids");
  }
  GptqSettings settings() const {
    GptqSettings s;
    s.group_size = 32;
    return s;
  }
  CalibrationSet calib_;
};

TEST_F(QuantizeModel, GptqBeatsRtnAndTheModelHoldsWhatIsPacked) {
  const uint64_t seed = fresh_seed();
  LlamaModel m = load_nf4(shared_model());
  add_random_lora(m, seed);
  const QuantizedModel q = quantize_model(m, calib_, settings(), QuantMethod::kGptq);
  ASSERT_EQ(q.linears.size(), 35u);
  EXPECT_EQ(q.merges.size(), 35u);
  double gptq = 0, rtn = 0;
  for (const auto& l : q.linears) {
    EXPECT_GT(l.tokens, 0) << l.name;
    gptq += l.error;
    rtn += l.rtn_error;
  }
  EXPECT_LT(gptq, 0.8 * rtn) << "GPTQ's output error on the calibration set must be well below RTN's";
  // Every linear is dense now and holds exactly the dequantized packed codes.
  m.for_each_linear([&](const std::string& name, const Linear& l) {
    ASSERT_FALSE(l.qweight.has_value()) << name;
    ASSERT_FALSE(l.lora) << name;
    const auto out = l.shape()[0], in = l.shape()[1];
    const GptqLinear g = unpack_gptq_v1([&](const std::string& n) { auto it = q.packed.find(n); return it == q.packed.end() ? at::Tensor() : it->second; },
                                        "packed", name, out, in, 4, 32);
    // fp16 scales on disk: the in-memory model uses the fp32 scales; they agree to fp16 rounding.
    EXPECT_LT((g.dequantize(at::kFloat) - l.weight).abs().max().item<double>(), 2e-3 * l.weight.abs().max().item<double>()) << name;
  });
}

TEST_F(QuantizeModel, SequentialAndOnePassAndRtnWithoutData) {
  LlamaModel a = load_nf4(shared_model()), b = load_nf4(shared_model()), c = load_nf4(shared_model());
  GptqSettings s = settings();
  const QuantizedModel seq = quantize_model(a, calib_, s, QuantMethod::kGptq);
  s.true_sequential = false;
  const QuantizedModel one = quantize_model(b, calib_, s, QuantMethod::kGptq);
  // The first group of layer 0 sees the same inputs either way; later groups see quantized inputs
  // only in the sequential mode.
  EXPECT_DOUBLE_EQ(seq.linears[0].error, one.linears[0].error);
  EXPECT_NE(seq.linears[3].error, one.linears[3].error);
  const QuantizedModel rtn = quantize_model(c, CalibrationSet{}, settings(), QuantMethod::kRtn);
  EXPECT_EQ(rtn.packed.size(), seq.packed.size());
  EXPECT_EQ(rtn.linears[0].tokens, 0);
  EXPECT_THROW(quantize_model(c, CalibrationSet{}, settings(), QuantMethod::kGptq), UsageError);
}

// --- every family's tensors survive the export ----------------------------------------------------

// A random model of `family` (vocabulary of the shared tokenizer, whose files are copied beside it), as a
// model directory: Qwen2's q/k/v biases, Qwen3's q/k norms, an untied lm_head, Mistral's window.
fs::path random_model_dir(const fs::path& dir, const std::string& model_type, const nlohmann::json& extra, uint64_t seed) {
  nlohmann::ordered_json cfg = {{"model_type", model_type}, {"vocab_size", 512}, {"hidden_size", 64},
                                {"intermediate_size", 96}, {"num_hidden_layers", 2}, {"num_attention_heads", 4},
                                {"num_key_value_heads", 2}, {"max_position_embeddings", 256}, {"rms_norm_eps", 1e-5},
                                {"tie_word_embeddings", false}, {"torch_dtype", "float32"}};
  for (auto& [k, v] : extra.items()) cfg[k] = v;
  const ModelConfig mc = parse_model_config_text(cfg.dump(), model_type);
  const LlamaModel m = LlamaModel::random(mc, LoadOptions{}, at::make_generator<at::CPUGeneratorImpl>(seed));
  ModelDirContents c;
  c.config = cfg;
  c.tensors = m.state_tensors();
  c.copy_files_from = shared_model();  // tokenizer files
  write_model_dir(dir, c);
  return dir;
}

TEST(ExportFamilies, BiasesNormsAndUntiedHeadSurviveMergedAndGptq) {
  if (!fs::exists(shared_model() / "config.json")) GTEST_SKIP() << "shared test data not found at " << shared_model();
  const uint64_t seed = fresh_seed();
  test_tools::ScratchDir dir("export-families");
  const std::vector<std::pair<std::string, nlohmann::json>> families = {
      {"qwen2", {}},                                    // q/k/v biases
      {"qwen3", {{"head_dim", 16}}},                    // per-head q/k norms
      {"mistral", {{"sliding_window", 8}}},             // window shorter than the calibration windows
      {"llama", {{"attention_bias", true}}},            // biases on q, k, v, o
  };
  for (const auto& [type, extra] : families) {
    SCOPED_TRACE(type);
    const fs::path base = random_model_dir(dir.path / type, type, extra, seed);
    const LlamaModel ref = LlamaModel::load(base, LoadOptions{});
    auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
    const at::Tensor ids = at::randint(0, 512, {2, 24}, gen);
    at::NoGradGuard ng;
    const at::Tensor want = ref.forward(ids);

    ExportJob job;
    job.model_dir = base;
    job.settings.format = ExportFormat::kMerged;
    job.settings.dtype = "float32";
    job.settings.report = false;
    job.settings.out = dir.path / (type + "-merged");
    run_export(job);
    // No adapter, float32: the merged export is the base, bit for bit.
    EXPECT_TRUE(at::equal(LlamaModel::load(job.settings.out, LoadOptions{}).forward(ids), want));

    job.settings.format = ExportFormat::kGptq;
    job.settings.dtype = "auto";
    job.settings.group_size = 32;
    job.settings.calib = (fs::path(QTRAIN_SHARED_DATA) / "corpus/wiki_demo.txt").string();
    job.settings.calib_samples = 4;
    job.settings.calib_len = 32;
    job.settings.out = dir.path / (type + "-gptq");
    run_export(job);
    const auto ckpt = safetensors::Checkpoint::open(job.settings.out);
    EXPECT_TRUE(ckpt.contains("lm_head.weight"));  // untied: written dense
    EXPECT_FALSE(ckpt.contains("model.layers.0.self_attn.q_proj.weight"));
    EXPECT_TRUE(ckpt.contains("model.layers.0.self_attn.q_proj.qweight"));
    if (type == "qwen2") EXPECT_TRUE(ckpt.contains("model.layers.1.self_attn.v_proj.bias"));
    if (type == "qwen3") EXPECT_TRUE(ckpt.contains("model.layers.1.self_attn.k_norm.weight"));
    if (type == "llama") EXPECT_TRUE(ckpt.contains("model.layers.1.self_attn.o_proj.bias"));
    // 4-bit random weights move the logits, but they stay the same function: correlation near 1.
    const at::Tensor got = LlamaModel::load(job.settings.out, LoadOptions{}).forward(ids);
    const double corr = at::corrcoef(at::stack({got.flatten(), want.flatten()}))[0][1].item<double>();
    EXPECT_GT(corr, 0.9) << "a tensor lost or misplaced would decorrelate the logits";
  }
}

// --- qtrain export end to end --------------------------------------------------------------------

// The bar: on the real trained model, GPTQ's perplexity and KL in the report beat RTN's.
TEST(ExportCli, GptqBeatsRtnInTheReportOnTheRealModel) {
  if (!fs::exists(shared_text())) GTEST_SKIP() << "shared test data not found at " << shared_text();
  test_tools::ScratchDir dir("export-gptq");
  const fs::path out = dir.path / "gptq";
  const auto r = run_qtrain("export --model " + shared_model().string() + " --format gptq --group-size 32 --calib " +
                            (fs::path(QTRAIN_SHARED_DATA) / "corpus/wiki_demo.txt").string() +
                            " --calib-samples 16 --calib-len 256 --eval-text " + shared_text().string() +
                            " --eval-len 256 --eval-windows 16 --out " + out.string());
  ASSERT_EQ(r.code, 0) << r.output;
  std::ifstream in(out / "export_report.json");
  const auto j = nlohmann::json::parse(in);
  std::map<std::string, nlohmann::json> by_prefix;
  for (const auto& m : j["models"]) by_prefix[m["name"].get<std::string>().substr(0, 4)] = m;
  ASSERT_TRUE(by_prefix.count("GPTQ") && by_prefix.count("RTN ")) << j.dump(2);
  const double gptq_ppl = by_prefix["GPTQ"]["text"]["ppl"], rtn_ppl = by_prefix["RTN "]["text"]["ppl"];
  const double gptq_kl = by_prefix["GPTQ"]["text"]["kl"], rtn_kl = by_prefix["RTN "]["text"]["kl"];
  std::cout << "ppl GPTQ " << gptq_ppl << " RTN " << rtn_ppl << "; KL GPTQ " << gptq_kl << " RTN " << rtn_kl << "\n";
  EXPECT_LT(gptq_ppl, rtn_ppl);
  EXPECT_LT(gptq_kl, rtn_kl);
  EXPECT_LT(j["size"]["ratio_to_bf16"].get<double>(), 0.5);
  EXPECT_TRUE(fs::exists(out / "export_report.md"));
  EXPECT_TRUE(fs::exists(out / "quantize_config.json"));
}

// Every directory qtrain writes reads back in qtrain eval and qtrain generate: merged (bf16), GPTQ
// (4 and 8 bits, act-order), AWQ, and the bnb-4bit checkpoint of qtrain quantize. (GGUF files are for
// llama.cpp; the export's own report reads them back: tests/oracle/test_gguf.py.)
TEST(ExportCli, EvalAndGenerateReadEveryDirectoryQtrainWrites) {
  if (!fs::exists(shared_text())) GTEST_SKIP() << "shared test data not found at " << shared_text();
  test_tools::ScratchDir dir("export-roundtrip");
  const std::string model = " --model " + shared_model().string();
  const std::string calib = " --calib " + (fs::path(QTRAIN_SHARED_DATA) / "corpus/wiki_demo.txt").string() +
                            " --calib-samples 4 --calib-len 64 --no-report --group-size 32";
  const std::vector<std::pair<std::string, std::string>> exports = {
      {"merged", "export" + model + " --format merged"},
      {"gptq4", "export" + model + " --format gptq" + calib},
      {"gptq8-act-order", "export" + model + " --format gptq --bits 8 --desc-act" + calib},
      {"awq", "export" + model + " --format awq" + calib},
      {"bnb4", "quantize " + shared_model().string()},
  };
  for (const auto& [name, args] : exports) {
    const fs::path out = dir.path / name;
    auto r = run_qtrain(args + " --out " + out.string());
    ASSERT_EQ(r.code, 0) << args << "\n" << r.output;
    r = run_qtrain("eval --model " + out.string() + " --data " + shared_text().string() + " --seq-len 64 --max-windows 2");
    EXPECT_EQ(r.code, 0) << name << "\n" << r.output;
    EXPECT_NE(r.output.find("\"ppl\""), std::string::npos) << name << "\n" << r.output;
    r = run_qtrain("generate " + out.string() + " --ids 1 --max-new-tokens 8 --greedy");
    EXPECT_EQ(r.code, 0) << name << "\n" << r.output;
  }
}

TEST(ExportCli, GgufFileBesideItsReport) {
  if (!fs::exists(shared_text())) GTEST_SKIP() << "shared test data not found at " << shared_text();
  test_tools::ScratchDir dir("export-gguf");
  const fs::path out = dir.path / "gguf";
  const auto r = run_qtrain("export --model " + shared_model().string() + " --format gguf --gguf-type q8_0 --eval-text " +
                            shared_text().string() + " --eval-len 128 --eval-windows 4 --log-format json --out " + out.string(),
                            /*split_stderr=*/true);
  ASSERT_EQ(r.code, 0) << r.output << r.err;
  EXPECT_TRUE(fs::exists(out / "llama2c-xs-tok512-hf-q8_0.gguf")) << r.output;
  // --log-format json: every line on stderr is a JSON object (messages, and progress lines had any been due).
  std::istringstream err(r.err);
  int lines = 0;
  for (std::string line; std::getline(err, line); ++lines) {
    const auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    ASSERT_TRUE(j.is_object() && (j["kind"] == "message" || j["kind"] == "progress")) << line;
  }
  EXPECT_GT(lines, 0) << "the export says what it wrote";
  std::ifstream in(out / "export_report.json");
  const auto j = nlohmann::json::parse(in);
  const auto& written = j["models"].back();
  EXPECT_NE(written["name"].get<std::string>().find("GGUF q8_0"), std::string::npos) << j.dump(2);
  // Q8_0 of the real model: close to the reference, far from nothing.
  EXPECT_LT(written["text"]["kl"].get<double>(), 0.01) << j.dump(2);
  EXPECT_GT(written["bytes"].get<double>(), 0);
  const auto bad = run_qtrain("export --model " + shared_model().string() + " --format gguf --gguf-type q3_k --out " +
                              (dir.path / "bad").string());
  EXPECT_EQ(bad.code, 2) << bad.output;
  EXPECT_NE(bad.output.find("gguf_type"), std::string::npos) << bad.output;
}

TEST(ExportCli, BadInvocationsAreUsageErrorsAndTouchNothing) {
  if (!fs::exists(shared_model() / "config.json")) GTEST_SKIP() << "shared test data not found at " << shared_model();
  test_tools::ScratchDir dir("export-cli");
  const std::string model = " --model " + shared_model().string();
  struct Case {
    std::string args, says;
  };
  const fs::path busy = dir.path / "busy";
  fs::create_directories(busy);
  { std::ofstream(busy / "keep.txt") << "mine"; }
  fs::create_directories(dir.path / "models");
  fs::copy(shared_model(), dir.path / "models" / "tiny", fs::copy_options::recursive);
  const Case cases[] = {
      {"export --format merged --out " + (dir.path / "o").string(), "run directory or --model"},
      {"export " + dir.path.string() + model + " --format merged --out " + (dir.path / "o").string(), "not both"},
      {"export" + model + " --format awq2 --out " + (dir.path / "o").string(), "--format 'awq2'"},
      {"export" + model + " --format awq --bits 8 --out " + (dir.path / "o").string(), "4 bits only"},
      {"export" + model + " --format merged", "--out is required"},
      {"export" + model + " --format gptq --bits 3 --out " + (dir.path / "o").string(), "bits: must be 4 or 8"},
      {"export" + model + " --format gptq --sym --asym --out " + (dir.path / "o").string(), "contradict"},
      {"export" + model + " --format gptq --out " + (dir.path / "o").string(), "needs a run directory"},
      {"export" + model + " --base-quant nf5 --format merged --out " + (dir.path / "o").string(), "--base-quant 'nf5'"},
      {"export" + model + " --format merged --out " + busy.string(), "--overwrite"},
      {"export " + dir.path.string() + " --format merged", "not a qtrain run directory"},
      {"export" + model + " --format merged --out " + (busy / "keep.txt").string() + " --overwrite", "is not a directory"},
      // --overwrite never replaces a directory holding an input (a copy of the base, never the shared data).
      {"export --model " + (dir.path / "models" / "tiny").string() + " --format merged --overwrite --out " + (dir.path / "models").string(),
       "holds the input"},
      {"export" + model + " --format merged --out " + (dir.path / "o").string() + " --eval-text " + (dir.path / "none.raw").string(),
       "none.raw"},
  };
  for (const auto& c : cases) {
    const auto r = run_qtrain(c.args);
    EXPECT_TRUE(r.code == 2 || r.code == 3) << c.args << "\n" << r.output;  // usage, or a bad input file
    EXPECT_NE(r.output.find(c.says), std::string::npos) << c.args << "\n" << r.output;
  }
  EXPECT_FALSE(fs::exists(dir.path / "o"));
  EXPECT_TRUE(fs::exists(dir.path / "models" / "tiny" / "model.safetensors"));
  std::ifstream keep(busy / "keep.txt");
  std::string s;
  keep >> s;
  EXPECT_EQ(s, "mine");
}

}  // namespace
}  // namespace qtrain
