// Training invariants on a tiny NF4 + LoRA model:
// - gradient accumulation: k micro-batches of b rows == one batch of k·b rows (token-weighted loss);
// - recompute on/off: identical loss and gradients, dropout included (RNG replay);
// - bit-exact resume through the CLI: N steps straight == N/2, stop, resume, N/2 (losses and adapter bytes).
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <thread>

#include <ATen/CPUGeneratorImpl.h>

#include <filesystem>
#include <fstream>
#include <random>

#include <nlohmann/json.hpp>

#include "data/io/safetensors.h"
#include "trainer/loss.h"
#include "trainer/model/model.h"

namespace qtrain {
namespace {
namespace fs = std::filesystem;

fs::path make_tiny_model() {
  fs::path d = fs::temp_directory_path() / ("qtrain-train-" + std::to_string(std::random_device{}()));
  fs::create_directories(d);
  nlohmann::json cfg = {{"model_type", "llama"}, {"vocab_size", 48}, {"hidden_size", 32}, {"intermediate_size", 40},
                        {"num_hidden_layers", 2}, {"num_attention_heads", 4}, {"num_key_value_heads", 2},
                        {"tie_word_embeddings", false}, {"rms_norm_eps", 1e-5}};
  std::ofstream(d / "config.json") << cfg.dump();
  std::map<std::string, at::Tensor> w = {{"model.embed_tokens.weight", at::randn({48, 32})},
                                         {"lm_head.weight", at::randn({48, 32}) * 0.3},
                                         {"model.norm.weight", at::ones({32})}};
  for (int i = 0; i < 2; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    w[p + "input_layernorm.weight"] = at::ones({32});
    w[p + "post_attention_layernorm.weight"] = at::ones({32});
    for (auto [n, o, in] : {std::tuple<const char*, int, int>{"self_attn.q_proj", 32, 32}, {"self_attn.k_proj", 16, 32},
                            {"self_attn.v_proj", 16, 32}, {"self_attn.o_proj", 32, 32}, {"mlp.gate_proj", 40, 32},
                            {"mlp.up_proj", 40, 32}, {"mlp.down_proj", 32, 40}})
      w[p + n + ".weight"] = at::randn({o, in}) / std::sqrt(static_cast<double>(in));
  }
  safetensors::save(d / "model.safetensors", w);
  return d;
}

struct Fixture {
  fs::path dir = make_tiny_model();
  ~Fixture() { fs::remove_all(dir); }
  LlamaModel load(double dropout) {
    LoadOptions o;
    o.quantize = ops::QuantParams{};
    LlamaModel m = LlamaModel::load(dir, o);
    LoraSpec spec;
    spec.config.rank = 4;
    spec.config.alpha = 8;
    spec.config.dropout = dropout;
    m.add_lora(spec, at::make_generator<at::CPUGeneratorImpl>(11));
    // Non-zero B so every adapter's gradient depends on the whole path.
    at::NoGradGuard ng;
    at::Generator g = at::make_generator<at::CPUGeneratorImpl>(5);
    for (auto& [name, p] : m.lora_parameters()) p.add_(at::normal(0.0, 0.05, p.sizes(), g));
    return m;
  }
};

struct Rows {
  at::Tensor ids, labels, pos, seg;  // [B, T]
};

// Rows of different lengths, right-padded; the first token of each row is never a target.
Rows make_rows(int64_t b, int64_t t) {
  Rows r;
  r.ids = at::randint(0, 48, {b, t}, at::kLong);
  r.labels = r.ids.clone();
  r.pos = at::arange(t, at::kLong).repeat({b, 1});
  r.seg = at::zeros({b, t}, at::kInt);
  for (int64_t i = 0; i < b; ++i) {
    const int64_t len = std::max<int64_t>(3, t - 2 * i);  // unequal lengths: micro-batches differ in tokens
    r.labels[i].narrow(0, 0, 1).fill_(-100);
    if (len < t) {
      r.labels[i].narrow(0, len, t - len).fill_(-100);
      r.seg[i].narrow(0, len, t - len).fill_(-1);
      r.pos[i].narrow(0, len, t - len).fill_(0);
    }
  }
  return r;
}

Rows slice(const Rows& r, int64_t start, int64_t n) {
  return {r.ids.narrow(0, start, n), r.labels.narrow(0, start, n), r.pos.narrow(0, start, n), r.seg.narrow(0, start, n)};
}

int64_t targets(const Rows& r) { return (r.labels.narrow(1, 1, r.labels.size(1) - 1) != -100).sum().item<int64_t>(); }

std::vector<at::Tensor> grads(LlamaModel& m) {
  std::vector<at::Tensor> g;
  for (auto& [name, p] : m.lora_parameters()) g.push_back(p.grad().clone());
  return g;
}
void zero(LlamaModel& m) {
  for (auto& [name, p] : m.lora_parameters()) p.mutable_grad() = at::Tensor();
}

TEST(Training, AccumulationEqualsOneBigBatch) {
  Fixture f;
  LlamaModel m = f.load(0.0);
  const Rows all = make_rows(4, 12);
  const int64_t n = targets(all);
  RunContext ctx;
  ctx.training = true;
  LossSum big = causal_lm_loss(m, m.hidden_states(all.ids, all.seg, all.pos, &ctx), all.labels);
  (big.sum / n).backward();
  const double big_loss = big.sum.item<double>() / n;
  const auto g_big = grads(m);
  zero(m);
  double acc_loss = 0;
  for (int64_t s = 0; s < 4; s += 2) {  // two micro-batches of 2 rows, each weighted by the step's tokens
    const Rows part = slice(all, s, 2);
    LossSum ls = causal_lm_loss(m, m.hidden_states(part.ids, part.seg, part.pos, &ctx), part.labels);
    (ls.sum / n).backward();
    acc_loss += ls.sum.item<double>() / n;
  }
  const auto g_acc = grads(m);
  // fp32: the two runs sum the same terms in another order; relative 1e-5 is ~100 ulps of headroom.
  EXPECT_NEAR(acc_loss, big_loss, 1e-5 * std::abs(big_loss));
  for (std::size_t i = 0; i < g_big.size(); ++i)
    EXPECT_TRUE(at::allclose(g_acc[i], g_big[i], 1e-4, 1e-6)) << "adapter tensor " << i << ": max diff "
                                                               << (g_acc[i] - g_big[i]).abs().max().item<double>();
  // Negative control: a per-micro-batch mean (the classic bug) must give a different loss.
  zero(m);
  double wrong = 0;
  for (int64_t s = 0; s < 4; s += 2) {
    const Rows part = slice(all, s, 2);
    LossSum ls = causal_lm_loss(m, m.hidden_states(part.ids, part.seg, part.pos, &ctx), part.labels);
    wrong += ls.sum.item<double>() / ls.tokens / 2;
  }
  EXPECT_GT(std::abs(wrong - big_loss), 1e-4 * std::abs(big_loss)) << "wrong " << wrong << " big " << big_loss;
}

TEST(Training, ChunkedLossBackwardEqualsPlainAutograd) {
  // The training loss cuts the graph at the final hidden states and backpropagates the LM head chunk by
  // chunk (memory); it must give the gradients of plain autograd through the whole loss.
  Fixture f;
  LlamaModel m = f.load(0.0);
  const Rows r = make_rows(3, 14);
  const double scale = 1.0 / targets(r);
  LossSum plain = causal_lm_loss(m, m.hidden_states(r.ids, r.seg, r.pos, nullptr), r.labels);
  (plain.sum * scale).backward();
  const auto g_plain = grads(m);
  zero(m);
  LossSum chunked = causal_lm_loss_backward(m, m.hidden_states(r.ids, r.seg, r.pos, nullptr), r.labels, scale,
                                            /*chunk_tokens=*/5);  // several chunks, the last one partial
  const auto g_chunked = grads(m);
  EXPECT_NEAR(chunked.sum.item<double>(), plain.sum.item<double>(), 1e-5 * plain.sum.item<double>());
  EXPECT_EQ(chunked.tokens, plain.tokens);
  EXPECT_EQ(chunked.correct.item<int64_t>(), plain.correct.item<int64_t>());
  for (std::size_t i = 0; i < g_plain.size(); ++i)
    EXPECT_TRUE(at::allclose(g_chunked[i], g_plain[i], 1e-4, 1e-7)) << "adapter tensor " << i;
}

TEST(Training, RecomputeGivesIdenticalLossAndGradsWithDropout) {
  Fixture f;
  const Rows r = make_rows(3, 10);
  std::vector<at::Tensor> g[2];
  double loss[2];
  for (int rc = 0; rc < 2; ++rc) {
    LlamaModel m = f.load(0.2);
    RunContext ctx;
    ctx.training = true;
    ctx.recompute = rc == 1;
    ctx.dropout_gen = at::make_generator<at::CPUGeneratorImpl>(99);
    LossSum ls = causal_lm_loss(m, m.hidden_states(r.ids, r.seg, r.pos, &ctx), r.labels);
    ls.sum.backward();
    loss[rc] = ls.sum.item<double>();
    g[rc] = grads(m);
  }
  EXPECT_EQ(loss[0], loss[1]);
  for (std::size_t i = 0; i < g[0].size(); ++i)
    EXPECT_TRUE(at::equal(g[0][i], g[1][i])) << "adapter tensor " << i << " differs with recompute: max diff "
                                             << (g[0][i] - g[1][i]).abs().max().item<double>();
  // Negative control: recompute with a different dropout stream must change the gradients.
  LlamaModel m = f.load(0.2);
  RunContext ctx;
  ctx.training = true;
  ctx.recompute = true;
  ctx.dropout_gen = at::make_generator<at::CPUGeneratorImpl>(100);
  causal_lm_loss(m, m.hidden_states(r.ids, r.seg, r.pos, &ctx), r.labels).sum.backward();
  EXPECT_FALSE(at::equal(grads(m)[0], g[0][0]));
}

// ---- resume through the CLI, on the quickstart recipe made small ----

// Runs qtrain from the source root, where the recipes' relative paths point.
int run(const std::string& args, std::string* out = nullptr) {
  const fs::path root = fs::path(QTRAIN_SOURCE_DIR);
  const std::string cmd = "cd '" + root.string() + "' && " + std::string(QTRAIN_BINARY) + " " + args + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  char buf[4096];
  std::string text;
  std::size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) text.append(buf, n);
  const int st = pclose(p);
  if (out) *out = text;
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

std::vector<double> train_losses(const fs::path& metrics) {
  std::vector<double> out;
  std::ifstream in(metrics);
  for (std::string line; std::getline(in, line);) {
    auto j = nlohmann::json::parse(line);
    if (j["kind"] == "train") out.push_back(j["loss"].get<double>());
  }
  return out;
}

std::string bytes_of(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), {});
}

TEST(Training, ResumeIsBitExact) {
  const fs::path root = fs::path(QTRAIN_SOURCE_DIR);
  const fs::path tmp = fs::temp_directory_path() / ("qtrain-resume-" + std::to_string(std::random_device{}()));
  const std::string common = (root / "recipes/quickstart.yaml").string() + " --set model.path=" + (tmp / "base").string() +
                             " --set training.micro_batch_size=4 --set training.gradient_accumulation=2"
                             " --set schedule.log_every=1 --set schedule.eval_every=0 --set lora.dropout=0.1"
                             " --set training.schedule=constant --set training.warmup_steps=0 --set data.eval_fraction=0.01";
  std::string log;
  ASSERT_EQ(run(common + " --set training.max_steps=6 --set output_dir=" + (tmp / "a").string(), &log), 0) << log;
  ASSERT_EQ(run(common + " --set training.max_steps=3 --set output_dir=" + (tmp / "b").string(), &log), 0) << log;
  ASSERT_EQ(run(common + " --set training.max_steps=6 --set output_dir=" + (tmp / "b").string() + " --resume", &log), 0) << log;
  EXPECT_NE(log.find("resumed from"), std::string::npos) << log;
  const auto a = train_losses(tmp / "a" / "metrics.jsonl");
  const auto b = train_losses(tmp / "b" / "metrics.jsonl");
  ASSERT_EQ(a.size(), 6u);
  ASSERT_EQ(b.size(), 6u);
  for (int i = 0; i < 6; ++i) EXPECT_EQ(a[i], b[i]) << "loss at step " << i + 1;
  EXPECT_EQ(bytes_of(tmp / "a/adapter/adapter_model.safetensors"), bytes_of(tmp / "b/adapter/adapter_model.safetensors"));
  // A checkpoint from another recipe is refused.
  EXPECT_EQ(run(common + " --set lora.r=8 --set output_dir=" + (tmp / "b").string() + " --resume", &log), 2);
  EXPECT_NE(log.find("different recipe"), std::string::npos) << log;
  fs::remove_all(tmp);
}

TEST(Training, SigtermSavesACheckpointAndExitsCleanly) {
  const fs::path root = fs::path(QTRAIN_SOURCE_DIR);
  const fs::path tmp = fs::temp_directory_path() / ("qtrain-sigterm-" + std::to_string(std::random_device{}()));
  fs::create_directories(tmp);
  const std::string cmd = "cd '" + root.string() + "' && exec " + std::string(QTRAIN_BINARY) + " recipes/quickstart.yaml" +
                          " --set model.path=" + (tmp / "base").string() + " --set output_dir=" + (tmp / "run").string() +
                          " --set training.max_steps=100000 --set schedule.log_every=1 --set schedule.eval_every=0" +
                          " --set training.micro_batch_size=2 > " + (tmp / "log.txt").string() + " 2>&1";
  pid_t pid = 0;
  const char* argv[] = {"/bin/sh", "-c", cmd.c_str(), nullptr};
  ASSERT_EQ(posix_spawn(&pid, "/bin/sh", nullptr, nullptr, const_cast<char* const*>(argv), environ), 0);
  // Wait (at most 120 s) until training is under way, then pre-empt it like Slurm does.
  bool started = false;
  for (int i = 0; i < 1200 && !started; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    std::ifstream m(tmp / "run" / "metrics.jsonl");
    std::string text((std::istreambuf_iterator<char>(m)), {});
    started = text.find("\"kind\": \"train\"") != std::string::npos;
  }
  ASSERT_TRUE(started) << "training never logged a step";
  kill(pid, SIGTERM);
  int status = 0;
  waitpid(pid, &status, 0);
  std::ifstream l(tmp / "log.txt");
  const std::string log((std::istreambuf_iterator<char>(l)), {});
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << log;
  EXPECT_NE(log.find("stopped by signal 15"), std::string::npos) << log;
  bool saved = false;
  for (const auto& e : fs::directory_iterator(tmp / "run" / "checkpoints"))
    saved |= fs::exists(e.path() / "trainer_state.h5") && fs::exists(e.path() / "adapter" / "adapter_model.safetensors");
  EXPECT_TRUE(saved) << "no complete checkpoint after SIGTERM";
  fs::remove_all(tmp);
}

}  // namespace
}  // namespace qtrain
