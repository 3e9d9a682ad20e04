// export/perplexity: corpus text as HF's wikitext rows joined by "\n\n", window boundaries (tail dropped,
// max_windows, sliding windows scoring each token once), window_nll against a plain forward + cross-entropy
// written out here, the uniform-logit negative control (NLL == log V), KL(model || itself) == 0 and > 0 for
// a perturbed copy; `qtrain eval` on bad input (exit codes, the file named).
#include <gtest/gtest.h>

#include <ATen/CPUGeneratorImpl.h>
#include <sys/wait.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <random>
#include <set>

#include "data/error.h"
#include "export/perplexity.h"
#include "tests/cli_run.h"
#include "tests/scratch_dir.h"

namespace qtrain {
namespace {
namespace fs = std::filesystem;

uint64_t fresh_seed() {
  const uint64_t s = std::random_device{}();
  std::cout << "perplexity_test seed " << s << "\n";
  return s;
}

std::vector<int64_t> iota_ids(int64_t n) {
  std::vector<int64_t> v(n);
  for (int64_t i = 0; i < n; ++i) v[i] = i;
  return v;
}

void write(const fs::path& p, const std::string& s) {
  std::ofstream(p, std::ios::binary) << s;
}

TEST(CorpusText, RowsJoinedLikeHfWikitext) {
  test_tools::ScratchDir dir("ppl-corpus");
  // CRLF, a lone CR, whitespace-only lines, no newline at the end: Python's universal newlines, then the
  // wikitext loader's rows (line with its "\n", or "" when blank), joined by "\n\n".
  write(dir.path / "a.raw", " = T = \r\n \r\n Para one .\r\n\tmore\rlast");
  // (Expected strings printed by Python: '\n\n'.join(l if l.strip() else '' for l in open(f, encoding='utf-8')).)
  EXPECT_EQ(corpus_text(dir.path / "a.raw"), " = T = \n\n\n\n\n Para one .\n\n\n\tmore\n\n\nlast");
  // A trailing newline makes no extra row; a file of one blank line is one "" row.
  write(dir.path / "b.raw", "x\n\ny\n");
  EXPECT_EQ(corpus_text(dir.path / "b.raw"), "x\n\n\n\n\ny\n");
  write(dir.path / "c.raw", " \n");
  EXPECT_EQ(corpus_text(dir.path / "c.raw"), "");
}

TEST(CorpusText, MissingOrEmptyFileNamed) {
  test_tools::ScratchDir dir("ppl-corpus-bad");
  for (const fs::path& p : {dir.path / "missing.raw", dir.path / "empty.raw"}) {
    if (p.filename() == "empty.raw") write(p, "");
    try {
      corpus_text(p);
      ADD_FAILURE() << p << " must be refused";
    } catch (const InputError& e) {
      EXPECT_NE(std::string(e.what()).find(p.string()), std::string::npos) << e.what();
    }
  }
}

TEST(TextWindows, NonOverlappingDropsTheTail) {
  const TextWindows w = make_windows(iota_ids(23), 5, 5, 0);
  ASSERT_EQ(w.ids.sizes(), at::IntArrayRef({4, 5}));
  EXPECT_EQ(w.available, 4);
  EXPECT_EQ(w.dropped_tail, 3) << "tokens 20, 21, 22 fit no full window";
  EXPECT_EQ(w.corpus_tokens, 23);
  for (int64_t i = 0; i < 4; ++i)
    EXPECT_TRUE(at::equal(w.ids[i], at::arange(5 * i, 5 * i + 5, at::kLong))) << "window " << i;
  EXPECT_EQ(w.scored_tokens(), 4 * 4) << "every token but each window's first";
  // Exactly divisible: nothing dropped.
  const TextWindows e = make_windows(iota_ids(20), 5, 5, 0);
  EXPECT_EQ(e.size(), 4);
  EXPECT_EQ(e.dropped_tail, 0);
  // Exactly one window.
  EXPECT_EQ(make_windows(iota_ids(5), 5, 5, 0).size(), 1);
}

TEST(TextWindows, MaxWindowsTakesTheFirst) {
  const TextWindows w = make_windows(iota_ids(23), 5, 5, 2);
  ASSERT_EQ(w.size(), 2);
  EXPECT_EQ(w.available, 4);
  EXPECT_TRUE(at::equal(w.ids[1], at::arange(5, 10, at::kLong)));
  EXPECT_EQ(make_windows(iota_ids(23), 5, 5, 100).size(), 4) << "more than available = all";
}

TEST(TextWindows, SlidingScoresEveryTokenOnce) {
  // stride < seq_len: every token after the first up to the last window's end is scored exactly once.
  // stride == seq_len (non-overlapping): each window's first token is never scored (no context).
  for (const int64_t total : {24, 25, 31})
    for (const int64_t stride : {1, 2, 3, 4, 5}) {
      const int64_t len = 5;
      const TextWindows w = make_windows(iota_ids(total), len, stride, 0);
      const int64_t end = (w.size() - 1) * stride + len;  // one past the last window's end
      EXPECT_EQ(w.dropped_tail, total - end);
      EXPECT_LT(w.dropped_tail, stride) << "a whole stride more would have made another window";
      std::multiset<int64_t> scored;
      for (int64_t i = 0; i < w.size(); ++i) {
        EXPECT_EQ(w.ids[i][0].item<int64_t>(), i * stride);
        for (int64_t p = w.scored_from(i); p < len; ++p) scored.insert(w.ids[i][p].item<int64_t>());
      }
      std::multiset<int64_t> want;
      for (int64_t t = 1; t < end; ++t)
        if (stride < len || t % len != 0) want.insert(t);
      EXPECT_EQ(scored, want) << "total " << total << " stride " << stride;
      EXPECT_EQ(w.scored_tokens(), static_cast<int64_t>(want.size()));
    }
}

TEST(TextWindows, ImpossibleArgumentsRefused) {
  const auto ids = iota_ids(10);
  EXPECT_THROW(make_windows(ids, 1, 1, 0), UsageError) << "a window of one token predicts nothing";
  EXPECT_THROW(make_windows(ids, 5, 0, 0), UsageError);
  EXPECT_THROW(make_windows(ids, 5, 6, 0), UsageError) << "a stride past the window skips tokens";
  EXPECT_THROW(make_windows(ids, 5, 5, -1), UsageError);
  EXPECT_THROW(make_windows(ids, 11, 11, 0), UsageError) << "shorter than one window";
}

ModelConfig tiny_config(int64_t vocab) {
  ModelConfig c;
  c.family = ModelFamily::kLlama;
  c.vocab_size = vocab, c.hidden_size = 32, c.intermediate_size = 44, c.num_hidden_layers = 2;
  c.num_attention_heads = 4, c.num_key_value_heads = 2, c.head_dim = 8, c.rms_norm_eps = 1e-5;
  c.tie_word_embeddings = false;
  return c;
}

LlamaModel tiny_model(int64_t vocab, uint64_t seed) {
  return LlamaModel::random(tiny_config(vocab), {}, at::make_generator<at::CPUGeneratorImpl>(seed));
}

TextWindows random_windows(int64_t vocab, int64_t total, int64_t len, int64_t stride, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int64_t> ids(total);
  for (auto& v : ids) v = static_cast<int64_t>(rng() % static_cast<uint64_t>(vocab));
  return make_windows(ids, len, stride, 0);
}

// The definition, written out: each window through forward() on its own, fp32 log-softmax, the
// scored positions' NLL summed in double; KL from the reference's forward() alike.
struct Expected {
  double nll_sum = 0, kl_sum = 0;
  int64_t tokens = 0;
};
Expected by_forward(const LlamaModel& m, const TextWindows& w, const LlamaModel* ref) {
  at::NoGradGuard ng;
  Expected e;
  for (int64_t i = 0; i < w.size(); ++i) {
    const at::Tensor ids = w.ids.narrow(0, i, 1);
    const at::Tensor lp = at::log_softmax(m.forward(ids)[0].to(at::kDouble), -1);  // [seq, vocab]
    const at::Tensor lr = ref ? at::log_softmax(ref->forward(ids)[0].to(at::kDouble), -1) : at::Tensor();
    for (int64_t p = w.scored_from(i); p < w.seq_len; ++p) {
      e.nll_sum -= lp[p - 1][w.ids[i][p].item<int64_t>()].item<double>();
      if (ref) e.kl_sum += (lr[p - 1].exp() * (lr[p - 1] - lp[p - 1])).sum().item<double>();
      ++e.tokens;
    }
  }
  return e;
}

TEST(WindowNll, MatchesForwardAndCrossEntropy) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  const int64_t vocab = 37;
  const LlamaModel m = tiny_model(vocab, seed);
  const LlamaModel other = tiny_model(vocab, seed + 1);
  // 7 windows of 11, batches of 3 (the last one short), chunks of 5 rows (crossing windows); sliding too.
  for (const int64_t stride : {11, 4}) {
    const TextWindows w = random_windows(vocab, stride == 11 ? 80 : 35, 11, stride, seed + 2);
    const Expected e = by_forward(m, w, &other);
    const NllResult r = window_nll(m, w, 3, &other, {}, 5);
    EXPECT_EQ(r.tokens, e.tokens);
    EXPECT_EQ(r.tokens, w.scored_tokens());
    // fp32 logits from two paths (batched layer-by-layer vs one window through forward()) differ by
    // rounding: ~1e-7 relative per token, averaged.
    EXPECT_NEAR(r.nll, e.nll_sum / e.tokens, 1e-5) << "stride " << stride;
    EXPECT_NEAR(r.ppl, std::exp(e.nll_sum / e.tokens), 1e-4);
    EXPECT_NEAR(r.kl, e.kl_sum / e.tokens, 1e-5);
    EXPECT_GT(r.kl, 1e-3) << "two random models disagree";
    // Batch size and chunking change nothing but rounding.
    const NllResult one = window_nll(m, w, 1);
    EXPECT_NEAR(one.nll, r.nll, 1e-6);
    EXPECT_EQ(one.kl, -1) << "no reference, no KL";
  }
}

TEST(WindowNll, UniformLogitsGiveLogVocab) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  const int64_t vocab = 53;
  LlamaModel m = tiny_model(vocab, seed);
  const TextWindows w = random_windows(vocab, 40, 8, 8, seed + 1);
  const NllResult before = window_nll(m, w, 2);
  // Negative control: a final norm of zeros makes every logit 0, the uniform distribution.
  m.state_tensors().at("model.norm.weight").zero_();
  const NllResult r = window_nll(m, w, 2);
  EXPECT_NEAR(r.nll, std::log(static_cast<double>(vocab)), 1e-6);
  EXPECT_NEAR(r.ppl, static_cast<double>(vocab), 1e-4);
  EXPECT_GT(std::abs(before.nll - r.nll), 1e-3) << "the random model is not already uniform";
}

TEST(WindowNll, KlOfAModelWithItselfIsZeroAndGrowsWithAPerturbation) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  const int64_t vocab = 41;
  const LlamaModel m = tiny_model(vocab, seed);
  LlamaModel same = tiny_model(vocab, seed);
  const TextWindows w = random_windows(vocab, 50, 9, 9, seed + 1);
  const NllResult r = window_nll(m, w, 2, &same);
  EXPECT_EQ(r.kl, 0.0) << "identical weights, identical ops: identical log-probabilities";
  EXPECT_EQ(r.nll, window_nll(m, w, 2).nll) << "the reference does not change the model's NLL";

  // Perturb one linear a little, then more: KL > 0 and growing.
  at::Tensor up = same.state_tensors().at("model.layers.1.mlp.up_proj.weight");
  const at::Tensor orig = up.clone();
  at::Generator g = at::make_generator<at::CPUGeneratorImpl>(seed + 2);
  const at::Tensor noise = at::normal(0.0, 1.0, up.sizes(), g) * up.abs().mean();
  up.add_(noise * 0.05);
  const double small = window_nll(m, w, 2, &same).kl;
  up.copy_(orig + noise * 0.5);
  const double large = window_nll(m, w, 2, &same).kl;
  EXPECT_GT(small, 0.0);
  EXPECT_GT(large, small);
}

TEST(WindowNll, BadInputRefused) {
  const LlamaModel m = tiny_model(16, 1);
  const TextWindows w = make_windows(iota_ids(20), 5, 5, 0);  // ids up to 19, vocab 16
  EXPECT_THROW(window_nll(m, w, 1), InputError);
  const TextWindows ok = make_windows(iota_ids(10), 5, 5, 0);
  EXPECT_THROW(window_nll(m, ok, 0), UsageError);
  const LlamaModel other = tiny_model(17, 1);
  EXPECT_THROW(window_nll(m, ok, 1, &other), UsageError) << "KL needs one vocabulary";
}

// --- qtrain eval on bad input -------------------------------------------------------------------

using test_tools::CliRun;
CliRun qtrain(const std::string& args) { return test_tools::run_qtrain(args); }

class EvalCli : public ::testing::Test {
 protected:
  void SetUp() override {
    model_ = fs::path(QTRAIN_SHARED_DATA) / "models/llama2c-xs-tok512-hf";
    if (!fs::exists(model_ / "config.json")) GTEST_SKIP() << "shared test data not found at " << model_;
  }
  std::string model_arg() const { return "--model " + model_.string(); }
  fs::path model_;
};

TEST_F(EvalCli, BadInputNamesTheFile) {
  test_tools::ScratchDir dir("eval-cli");
  const fs::path missing = dir.path / "no-such.raw";
  CliRun r = qtrain("eval " + model_arg() + " --data " + missing.string());
  EXPECT_EQ(r.code, 3) << r.output;
  EXPECT_NE(r.output.find(missing.string()), std::string::npos) << r.output;

  write(dir.path / "c.raw", "Once upon a time.\n");
  r = qtrain("eval " + model_arg() + " --data " + (dir.path / "c.raw").string() + " --format wikitext");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("--format"), std::string::npos) << r.output;

  // A malformed dataset file: exit 3, the file named.
  write(dir.path / "bad.json", "[{\"instruction\": \"hi\", \"output\": ");
  r = qtrain("eval " + model_arg() + " --data " + (dir.path / "bad.json").string() + " --format alpaca --cache-dir " +
             (dir.path / "cache").string());
  EXPECT_EQ(r.code, 3) << r.output;
  EXPECT_NE(r.output.find("bad.json"), std::string::npos) << r.output;

  // The corpus is shorter than one window; --seq-len past max_position_embeddings (256); --stride > --seq-len.
  r = qtrain("eval " + model_arg() + " --data " + (dir.path / "c.raw").string() + " --seq-len 64");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("fewer than one window"), std::string::npos) << r.output;
  r = qtrain("eval " + model_arg() + " --data " + (dir.path / "c.raw").string() + " --seq-len 512");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("max_position_embeddings"), std::string::npos) << r.output;
  r = qtrain("eval " + model_arg() + " --data " + (dir.path / "c.raw").string() + " --seq-len 8 --stride 9");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("stride 9"), std::string::npos) << r.output;

  // A missing model directory: exit 3 naming it.
  r = qtrain("eval --model " + (dir.path / "nomodel").string() + " --data " + (dir.path / "c.raw").string());
  EXPECT_EQ(r.code, 3) << r.output;
  EXPECT_NE(r.output.find("nomodel"), std::string::npos) << r.output;
}

TEST_F(EvalCli, WritesJsonAtomically) {
  test_tools::ScratchDir dir("eval-cli-out");
  std::string text;
  for (int i = 0; i < 40; ++i) text += " Once upon a time , there was a little girl named Lily .\n \n";
  write(dir.path / "c.raw", text);
  const fs::path out = dir.path / "r.json";
  const CliRun r = qtrain("eval " + model_arg() + " --data " + (dir.path / "c.raw").string() +
                       " --seq-len 64 --max-windows 3 --batch-size 2 --out " + out.string());
  ASSERT_EQ(r.code, 0) << r.output;
  std::ifstream in(out);
  const std::string doc((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  for (const char* key : {"\"ppl\"", "\"nll\"", "\"tokens\": 189", "\"windows\": 3", "\"seq_len\": 64", "\"bos\": true",
                          "\"wall_seconds\"", "\"protocol\""})
    EXPECT_NE(doc.find(key), std::string::npos) << key << " in " << doc;
  for (const auto& e : fs::directory_iterator(dir.path))
    EXPECT_EQ(e.path().filename().string().find(".tmp."), std::string::npos) << "temporary left: " << e.path();
}

}  // namespace
}  // namespace qtrain
