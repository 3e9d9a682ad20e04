// GGUF export (export/gguf_export.h, gguf_file.h): Q4_K_M type choices against llama.cpp's rules on real
// shapes (Llama-2-7B, a 70B, the tiny model's non-256 rows), the Q/K permutation, the container round
// trip through our reader, the tiny model written and read back, refusals. gguf-py reading our files and
// the tokenizer metadata against convert_hf_to_gguf.py's construction are in tests/oracle/test_gguf.py.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <set>

#include "data/error.h"
#include "export/gguf_export.h"
#include "export/gguf_file.h"
#include "export/gguf_readback.h"
#include "tests/scratch_dir.h"

namespace qtrain {
namespace {

namespace fs = std::filesystem;
using gguf::GgmlType;

fs::path shared_model() { return fs::path(QTRAIN_SHARED_DATA) / "models/llama2c-xs-tok512-hf"; }

// The tensor list of a Llama in llama-quantize's order, with ggml shapes.
std::vector<gguf::TensorShape> llama_shapes(int64_t layers, int64_t hidden, int64_t ffn, int64_t vocab, int64_t kv_dim, bool tied) {
  std::vector<gguf::TensorShape> t;
  t.push_back({"output_norm.weight", {hidden}});
  if (!tied) t.push_back({"output.weight", {hidden, vocab}});
  t.push_back({"token_embd.weight", {hidden, vocab}});
  for (int64_t i = 0; i < layers; ++i) {
    const std::string b = "blk." + std::to_string(i) + ".";
    t.push_back({b + "attn_k.weight", {hidden, kv_dim}});
    t.push_back({b + "attn_norm.weight", {hidden}});
    t.push_back({b + "attn_output.weight", {hidden, hidden}});
    t.push_back({b + "attn_q.weight", {hidden, hidden}});
    t.push_back({b + "attn_v.weight", {hidden, kv_dim}});
    t.push_back({b + "ffn_down.weight", {ffn, hidden}});
    t.push_back({b + "ffn_gate.weight", {hidden, ffn}});
    t.push_back({b + "ffn_norm.weight", {hidden}});
    t.push_back({b + "ffn_up.weight", {hidden, ffn}});
  }
  return t;
}

std::map<std::string, GgmlType> types_of(GgufType type, const std::vector<gguf::TensorShape>& shapes, int64_t layers,
                                         int64_t heads, int64_t kv_heads) {
  const std::vector<GgmlType> t = gguf::choose_types(type, shapes, layers, heads, kv_heads);
  std::map<std::string, GgmlType> m;
  for (std::size_t i = 0; i < shapes.size(); ++i) m[shapes[i].name] = t[i];
  return m;
}

TEST(GgufTypes, Q4_K_MOnLlama2_7BShapesFollowLlamaCpp) {
  // Llama-2-7B: 32 layers, 4096 / 11008, untied. llama.cpp's Q4_K_M of it has Q6_K attn_v and ffn_down in
  // layers 0-3, 6, 9, ..., 27 and 28-31 (use_more_bits), output Q6_K, token_embd Q4_K, norms F32.
  const auto m = types_of(GgufType::kQ4_K_M, llama_shapes(32, 4096, 11008, 32000, 4096, false), 32, 32, 32);
  const std::set<int> more = {0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31};
  for (int i = 0; i < 32; ++i) {
    const std::string b = "blk." + std::to_string(i) + ".";
    const GgmlType want = more.count(i) ? GgmlType::kQ6_K : GgmlType::kQ4_K;
    EXPECT_EQ(m.at(b + "attn_v.weight"), want) << i;
    EXPECT_EQ(m.at(b + "ffn_down.weight"), want) << i;
    for (const char* n : {"attn_q.weight", "attn_k.weight", "attn_output.weight", "ffn_gate.weight", "ffn_up.weight"})
      EXPECT_EQ(m.at(b + n), GgmlType::kQ4_K) << b << n;
    EXPECT_EQ(m.at(b + "attn_norm.weight"), GgmlType::kF32);
  }
  EXPECT_EQ(m.at("output.weight"), GgmlType::kQ6_K);
  EXPECT_EQ(m.at("token_embd.weight"), GgmlType::kQ4_K);
  EXPECT_EQ(m.at("output_norm.weight"), GgmlType::kF32);
  // Tied embeddings: token_embd takes the output's rule.
  const auto tied = types_of(GgufType::kQ4_K_M, llama_shapes(32, 4096, 11008, 32000, 4096, true), 32, 32, 32);
  EXPECT_EQ(tied.at("token_embd.weight"), GgmlType::kQ6_K);
}

TEST(GgufTypes, Q4_K_MSeventyBRuleAndFallbacks) {
  // LLM_TYPE_70B (80 layers, GQA): attn_v that would stay Q4_K becomes Q5_K.
  const auto m = types_of(GgufType::kQ4_K_M, llama_shapes(80, 8192, 28672, 32000, 1024, false), 80, 64, 8);
  EXPECT_EQ(m.at("blk.0.attn_v.weight"), GgmlType::kQ6_K);
  EXPECT_EQ(m.at("blk.11.attn_v.weight"), GgmlType::kQ5_K);
  EXPECT_EQ(m.at("blk.11.attn_q.weight"), GgmlType::kQ4_K);
  // Rows of 64 (the tiny model): Q4_K → Q5_0, Q6_K → Q8_0; ffn_down rows of 192 likewise; output-like
  // tensors with rows not a multiple of 256 are Q8_0.
  const auto t = types_of(GgufType::kQ4_K_M, llama_shapes(5, 64, 192, 512, 32, true), 5, 8, 4);
  EXPECT_EQ(t.at("token_embd.weight"), GgmlType::kQ8_0);
  EXPECT_EQ(t.at("blk.0.attn_q.weight"), GgmlType::kQ5_0);
  EXPECT_EQ(t.at("blk.2.attn_v.weight"), GgmlType::kQ8_0);  // use_more_bits(2, 5)
  EXPECT_EQ(t.at("blk.4.ffn_down.weight"), GgmlType::kQ8_0);
  EXPECT_EQ(t.at("blk.3.ffn_down.weight"), GgmlType::kQ5_0);
  // Rows not a multiple of 32: F16 in every mix.
  const auto odd = types_of(GgufType::kQ4_K_M, llama_shapes(2, 48, 80, 100, 48, false), 2, 4, 4);
  EXPECT_EQ(odd.at("blk.0.attn_q.weight"), GgmlType::kF16);
  EXPECT_EQ(odd.at("output.weight"), GgmlType::kF16);
  const auto odd8 = types_of(GgufType::kQ8_0, llama_shapes(2, 48, 80, 100, 48, false), 2, 4, 4);
  EXPECT_EQ(odd8.at("blk.0.ffn_down.weight"), GgmlType::kF16);  // rows of 80
  EXPECT_EQ(odd8.at("blk.0.attn_norm.weight"), GgmlType::kF32);
  const auto f16 = types_of(GgufType::kF16, llama_shapes(2, 64, 96, 100, 64, false), 2, 4, 4);
  EXPECT_EQ(f16.at("token_embd.weight"), GgmlType::kF16);
  EXPECT_EQ(f16.at("blk.1.ffn_norm.weight"), GgmlType::kF32);
}

TEST(GgufPermute, InterleavesRotaryPairsPerHeadAndInverts) {
  // 2 heads of dim 8: HF rows per head are [r0..r3 | r4..r7] (rotate_half pairs (i, i+4)); llama.cpp
  // wants the pairs adjacent: r0 r4 r1 r5 r2 r6 r3 r7.
  const at::Tensor w = at::arange(16, at::kFloat).unsqueeze(1).repeat({1, 3});
  const at::Tensor p = gguf::permute_qk(w, 2);
  const std::vector<float> want = {0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15};
  for (int i = 0; i < 16; ++i) EXPECT_EQ(p[i][0].item<float>(), want[i]) << i;
  EXPECT_TRUE(at::equal(gguf::unpermute_qk(p, 2), w));
  const at::Tensor bias = at::randn({32});
  EXPECT_TRUE(at::equal(gguf::unpermute_qk(gguf::permute_qk(bias, 4), 4), bias));
  EXPECT_FALSE(at::equal(gguf::permute_qk(bias, 4), bias));  // negative control
}

TEST(GgufFile, WriterAndReaderAgreeAndRejectDamage) {
  test_tools::ScratchDir dir("gguf-file");
  gguf::Writer w;
  w.add("general.architecture", gguf::Value::string("llama"));
  w.add("x.u32", gguf::Value::u32(7));
  w.add("x.f32", gguf::Value::f32(0.5f));
  w.add("x.bool", gguf::Value::boolean(true));
  w.add("x.strings", gguf::Value::strings({"a", "", "\xe2\x96\x81b"}));
  w.add("x.i32s", gguf::Value::i32s({-1, 2}));
  EXPECT_THROW(w.add("x.u32", gguf::Value::u32(1)), std::logic_error);
  std::vector<float> a(3 * 64);
  for (std::size_t i = 0; i < a.size(); ++i) a[i] = static_cast<float>(i) * 0.25f - 3;
  w.add_tensor({"a", {64, 3}, GgmlType::kQ8_0, [a]() { return gguf::quantize_rows(GgmlType::kQ8_0, a.data(), 3, 64); }});
  w.add_tensor({"b", {5}, GgmlType::kF32, [] { std::vector<uint8_t> v(20, 0); v[0] = 1; return v; }});
  const fs::path f = dir.path / "t.gguf";
  const uint64_t bytes = w.write(f);
  EXPECT_EQ(bytes, fs::file_size(f));
  for (const auto& e : fs::directory_iterator(dir.path)) EXPECT_EQ(e.path().filename(), "t.gguf");  // no temporaries
  const gguf::File r = gguf::read_file(f);
  EXPECT_EQ(r.at("general.architecture").s, "llama");
  EXPECT_EQ(r.at("x.u32").u, 7u);
  EXPECT_EQ(r.at("x.f32").f, 0.5);
  EXPECT_EQ(r.at("x.bool").u, 1u);
  ASSERT_EQ(r.at("x.strings").arr.size(), 3u);
  EXPECT_EQ(r.at("x.strings").arr[2].s, "\xe2\x96\x81b");
  EXPECT_EQ(r.at("x.i32s").arr[0].i, -1);
  ASSERT_EQ(r.tensors.size(), 2u);
  EXPECT_EQ(r.data_offset % 32, 0u);
  EXPECT_EQ(r.tensor("b").offset % 32, 0u);
  EXPECT_EQ(r.tensor("a").ne, (std::vector<int64_t>{64, 3}));
  std::vector<float> back(a.size());
  gguf::dequantize_rows(GgmlType::kQ8_0, r.data(r.tensor("a")), 3, 64, back.data());
  for (std::size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(back[i], a[i], 44.75 / 127 * 0.55) << i;  // half a Q8_0 step at |a| ≤ 44.75
  EXPECT_EQ(r.data(r.tensor("b"))[0], 1);
  // A producer that lies about its size is a bug, caught before publishing.
  gguf::Writer bad;
  bad.add_tensor({"c", {4}, GgmlType::kF32, [] { return std::vector<uint8_t>(8); }});
  EXPECT_THROW(bad.write(dir.path / "bad.gguf"), std::logic_error);
  EXPECT_FALSE(fs::exists(dir.path / "bad.gguf"));
  // Damaged files: truncated, wrong magic.
  std::vector<char> img(bytes);
  std::ifstream(f, std::ios::binary).read(img.data(), static_cast<std::streamsize>(bytes));
  std::ofstream(dir.path / "trunc.gguf", std::ios::binary).write(img.data(), static_cast<std::streamsize>(bytes - 20));  // into the last tensor (past its padding)
  EXPECT_THROW(gguf::read_file(dir.path / "trunc.gguf"), InputError);
  img[0] = 'X';
  std::ofstream(dir.path / "magic.gguf", std::ios::binary).write(img.data(), static_cast<std::streamsize>(bytes));
  try {
    gguf::read_file(dir.path / "magic.gguf");
    FAIL() << "accepted a file without the magic";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("magic.gguf"), std::string::npos) << e.what();
  }
}

TEST(GgufExport, TinyModelQ4_K_MReadsBack) {
  if (!fs::exists(shared_model() / "config.json")) GTEST_SKIP() << "shared test data not found at " << shared_model();
  test_tools::ScratchDir dir("gguf-tiny");
  const LlamaModel m = LlamaModel::load(shared_model(), LoadOptions{});
  const fs::path f = dir.path / "tiny.gguf";
  const GgufResult res = write_gguf(f, m, shared_model(), GgufType::kQ4_K_M);
  EXPECT_EQ(res.bytes, fs::file_size(f));
  const gguf::File r = gguf::read_file(f);
  EXPECT_EQ(r.at("general.architecture").s, "llama");
  EXPECT_EQ(r.at("general.file_type").u, 15u);
  EXPECT_EQ(r.at("llama.block_count").u, 5u);
  EXPECT_EQ(r.at("llama.attention.head_count_kv").u, 4u);
  EXPECT_EQ(r.at("tokenizer.ggml.model").s, "llama");
  EXPECT_EQ(r.at("tokenizer.ggml.tokens").arr.size(), 512u);
  EXPECT_EQ(r.at("tokenizer.ggml.bos_token_id").u, 1u);
  EXPECT_EQ(r.at("tokenizer.ggml.add_bos_token").u, 1u);
  // tied: no output.weight; 2 + 5·9 tensors
  EXPECT_EQ(r.tensors.size(), 2u + 5u * 9u);
  ASSERT_EQ(res.tensor_types.size(), r.tensors.size());
  for (std::size_t i = 0; i < r.tensors.size(); ++i) {
    EXPECT_EQ(res.tensor_types[i].first, r.tensors[i].name);
    EXPECT_EQ(res.tensor_types[i].second, gguf::ggml_type_name(r.tensors[i].type));
  }
  // token_embd (Q8_0) dequantizes back to the embedding within Q8_0's half step.
  const at::Tensor emb = m.state_tensors().at("model.embed_tokens.weight");
  const gguf::TensorInfo& t = r.tensor("token_embd.weight");
  ASSERT_EQ(t.type, GgmlType::kQ8_0);
  std::vector<float> deq(emb.numel());
  gguf::dequantize_rows(t.type, r.data(t), emb.size(0), emb.size(1), deq.data());
  const at::Tensor back = at::from_blob(deq.data(), emb.sizes(), at::kFloat);
  const double amax = emb.abs().max().item<double>();
  EXPECT_LE((back - emb).abs().max().item<double>(), amax / 127 * 0.6);
  // attn_q is stored permuted: un-permuting its dequantization gives q_proj back.
  const gguf::TensorInfo& q = r.tensor("blk.1.attn_q.weight");
  const at::Tensor wq = m.state_tensors().at("model.layers.1.self_attn.q_proj.weight");
  std::vector<float> dq(wq.numel());
  gguf::dequantize_rows(q.type, r.data(q), wq.size(0), wq.size(1), dq.data());
  const at::Tensor qback = gguf::unpermute_qk(at::from_blob(dq.data(), wq.sizes(), at::kFloat), 8);
  EXPECT_LE((qback - wq).abs().max().item<double>(), wq.abs().max().item<double>() / 16 * 0.6);
  EXPECT_GT((gguf::permute_qk(wq, 8) - wq).abs().max().item<double>(), 0.01);  // the permutation moves rows
}

TEST(GgufExport, RefusesQwenAndFourBitModels) {
  test_tools::ScratchDir dir("gguf-refuse");
  ModelConfig c;
  c.family = ModelFamily::kQwen3;
  c.qk_norm = true;
  c.vocab_size = 64;
  c.hidden_size = 32;
  c.intermediate_size = 64;
  c.num_hidden_layers = 1;
  c.num_attention_heads = 2;
  c.num_key_value_heads = 1;
  c.head_dim = 16;
  const LlamaModel qwen = LlamaModel::random(c, {}, at::make_generator<at::CPUGeneratorImpl>(1));
  EXPECT_THROW(write_gguf(dir.path / "q.gguf", qwen, dir.path, GgufType::kF16), UsageError);
  c.family = ModelFamily::kLlama;
  c.qk_norm = false;
  LoadOptions lo;
  lo.quantize = ops::QuantParams{};
  const LlamaModel nf4 = LlamaModel::random(c, lo, at::make_generator<at::CPUGeneratorImpl>(1));
  try {
    write_gguf(dir.path / "n.gguf", nf4, dir.path, GgufType::kQ8_0);
    FAIL() << "wrote a 4-bit model";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("4-bit"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(dir.path / "n.gguf"));
  EXPECT_THROW(parse_gguf_type("q4_k_s"), UsageError);
  EXPECT_EQ(parse_gguf_type("Q4_K_M"), GgufType::kQ4_K_M);
}

TEST(GgufExport, MissingTokenizerIsAnInputErrorNamingTheDirectory) {
  test_tools::ScratchDir dir("gguf-notok");
  try {
    gguf::tokenizer_metadata(dir.path, 10);
    FAIL();
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find(dir.path.string()), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace qtrain

namespace qtrain {
namespace {

TEST(GgufReadback, FilesGiveTheModelBackWithinTheirQuantization) {
  if (!fs::exists(shared_model() / "config.json")) GTEST_SKIP() << "shared test data not found at " << shared_model();
  test_tools::ScratchDir dir("gguf-readback");
  const LlamaModel m = LlamaModel::load(shared_model(), LoadOptions{});
  const at::Tensor ids = at::randint(0, 512, {2, 24}, at::detail::createCPUGenerator(7)).to(at::kLong);
  const at::Tensor ref = m.forward(ids);
  // f16: the file is the model with its matrices rounded to half (norms stay f32), so reading it back
  // gives that model's logits to float32 reassociation; the unrounded model is a control.
  LlamaModel m16 = LlamaModel::load(shared_model(), LoadOptions{});
  for (auto& [name, t] : m16.state_tensors()) if (t.dim() == 2) t.copy_(t.to(at::kHalf).to(at::kFloat));
  const at::Tensor ref16 = m16.forward(ids);
  const double scale = ref.abs().max().item<double>();
  auto rel = [&](const at::Tensor& a, const at::Tensor& b) { return (a - b).abs().mean().item<double>() / scale; };
  std::map<GgufType, double> err;
  for (GgufType t : {GgufType::kF16, GgufType::kQ8_0, GgufType::kQ4_K_M}) {
    const fs::path f = dir.path / (gguf_type_name(t) + ".gguf");
    write_gguf(f, m, shared_model(), t);
    const at::Tensor got = load_gguf_model(f, m.config()).forward(ids);
    err[t] = rel(got, ref);
    if (t == GgufType::kF16) {
      EXPECT_LT(rel(got, ref16), 1e-6);
      EXPECT_GT(err[t], 10 * rel(got, ref16));  // the rounding is visible: the comparison above is not vacuous
    }
    std::cout << gguf_type_name(t) << ": mean |logit − merged| / max|logit| = " << err[t] << "\n";
  }
  // Measured on the tiny model: f16 1.7e-4, q8_0 5.0e-3, q4_k_m (Q5_0/Q8_0 here) 2.0e-2; bounds 3-4×.
  EXPECT_LT(err[GgufType::kQ8_0], 1.5e-2);
  EXPECT_LT(err[GgufType::kQ4_K_M], 8e-2);
  EXPECT_LT(err[GgufType::kF16], err[GgufType::kQ8_0]);
  EXPECT_LT(err[GgufType::kQ8_0], err[GgufType::kQ4_K_M]);
  ModelConfig other = m.config();
  other.num_key_value_heads = 8;
  EXPECT_THROW(load_gguf_model(dir.path / "f16.gguf", other), InputError);
}

}  // namespace
}  // namespace qtrain
