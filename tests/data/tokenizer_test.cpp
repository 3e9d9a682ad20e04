// Tokenizers against llama.cpp's test vectors (46 hard texts per tokenizer, with the ids the
// reference Hugging Face tokenizers give them) and the shared real tokenizers; plus bad input.
// Oracle-vs-transformers comparisons on thousands of real lines live in tests/oracle/test_tokenizers.py.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include "data/error.h"
#include "data/tokenizer/tokenizer.h"
#include "data/tokenizer/utf8.h"

namespace qtrain {
namespace {

namespace fs = std::filesystem;

const fs::path kShared = QTRAIN_SHARED_DATA;

#define SKIP_WITHOUT_SHARED_DATA()                                                                  \
  if (!fs::is_directory(kShared / "tokenizers"))                                                    \
  GTEST_SKIP() << "shared test data not found at " << kShared << " (present on CI; see README.md)"

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

struct Vector {
  std::string text;
  std::vector<int32_t> ids;
};

// The .inp file is every text followed by "\n__ggml_vocab_test__\n"; the .out file has one line of
// space-separated ids per text.
std::vector<Vector> read_vectors(const std::string& name) {
  const fs::path dir = kShared / "tokenizer-tests" / "llama.cpp";
  const std::string inp = slurp(dir / ("ggml-vocab-" + name + ".gguf.inp"));
  const std::string sep = "\n__ggml_vocab_test__\n";
  std::vector<Vector> v;
  for (size_t pos = 0; pos < inp.size();) {
    const size_t end = inp.find(sep, pos);
    if (end == std::string::npos) break;
    v.push_back({inp.substr(pos, end - pos), {}});
    pos = end + sep.size();
  }
  std::ifstream out(dir / ("ggml-vocab-" + name + ".gguf.out"));
  std::string line;
  for (auto& vec : v) {
    if (!std::getline(out, line)) break;
    std::istringstream ls(line);
    for (int32_t id; ls >> id;) vec.ids.push_back(id);
  }
  return v;
}

void expect_vectors(const std::string& vectors, const fs::path& tokenizer_dir) {
  const auto tok = load_tokenizer(tokenizer_dir);
  const auto v = read_vectors(vectors);
  ASSERT_EQ(v.size(), 46u) << "expected 46 texts in the " << vectors << " vectors";
  int mismatches = 0;
  for (const auto& [text, ids] : v) {
    const auto got = tok->encode(text, /*add_special=*/false);
    if (got != ids) ++mismatches;
    EXPECT_EQ(got, ids) << tok->describe() << "\ntext: '" << text << "'";
    EXPECT_EQ(tok->decode(got, false), text) << "round trip of '" << text << "'";
  }
  EXPECT_EQ(mismatches, 0) << mismatches << " of 46 " << vectors << " vectors differ";
}

TEST(TokenizerVectors, LlamaSentencepiece) {
  SKIP_WITHOUT_SHARED_DATA();
  expect_vectors("llama-spm", kShared / "tokenizers" / "llama2-spm");
}

TEST(TokenizerVectors, Phi3SameIdsAsLlama) {
  SKIP_WITHOUT_SHARED_DATA();
  expect_vectors("phi-3", kShared / "tokenizers" / "llama2-spm");
}

TEST(TokenizerVectors, Gpt2) {
  SKIP_WITHOUT_SHARED_DATA();
  expect_vectors("gpt-2", kShared / "tokenizers" / "gpt2");
}

TEST(TokenizerVectors, Qwen2) {
  SKIP_WITHOUT_SHARED_DATA();
  expect_vectors("qwen2", kShared / "tokenizers" / "qwen2");
}

TEST(Tokenizer, LlamaSpecialTokensAndBos) {
  SKIP_WITHOUT_SHARED_DATA();
  const auto tok = load_tokenizer(kShared / "tokenizers" / "llama2-spm");
  EXPECT_EQ(tok->bos_id(), 1);
  EXPECT_EQ(tok->eos_id(), 2);
  EXPECT_EQ(tok->unk_id(), 0);
  EXPECT_EQ(tok->pad_id(), std::nullopt);
  EXPECT_EQ(tok->vocab_size(), 32000);
  EXPECT_EQ(tok->encode("Hello world", true), (std::vector<int32_t>{1, 15043, 3186}));
  // Special tokens in the text are matched even without add_special; non-legacy (no
  // tokenizer_config.json, transformers 5's default): no "▁" after them.
  EXPECT_EQ(tok->encode("Hello <s> world</s>x", false), (std::vector<int32_t>{15043, 29871, 1, 3186, 2, 29916}));
  EXPECT_EQ(tok->decode(std::vector<int32_t>{1, 15043, 3186, 2}, true), "Hello world");
  EXPECT_EQ(tok->decode(std::vector<int32_t>{1, 15043, 3186, 2}, false), "<s> Hello world</s>");
  EXPECT_EQ(tok->token_to_id("▁Hello"), 15043);
  EXPECT_EQ(tok->id_to_token(13), "<0x0A>");
  EXPECT_TRUE(tok->is_special(1));
  EXPECT_FALSE(tok->is_special(15043));
}

TEST(Tokenizer, SharedTinyModel) {
  SKIP_WITHOUT_SHARED_DATA();
  const auto tok = load_tokenizer(kShared / "models" / "llama2c-xs-tok512-hf");
  EXPECT_EQ(tok->vocab_size(), 512);
  EXPECT_EQ(tok->bos_id(), 1);
  EXPECT_EQ(tok->eos_id(), 2);
  const std::string text = "Once upon a time, there was a little girl named Lily. She loved to play outside.";
  const auto ids = tok->encode(text, true);
  ASSERT_FALSE(ids.empty());
  EXPECT_EQ(ids.front(), 1) << "add_bos_token is true in its tokenizer_config.json";
  EXPECT_EQ(tok->decode(ids, true), text);
  // Characters outside the 512 pieces go through byte fallback and still round-trip.
  const std::string hard = "  Zoë's 🦙 café\n\tdouble  space";
  EXPECT_EQ(tok->decode(tok->encode(hard, false), false), hard);
  // legacy: true in its config, so the text after a special token gets its own "▁".
  const auto after = tok->encode("</s>Once", false);
  ASSERT_EQ(after.size(), 2u);
  EXPECT_EQ(after[0], 2);
  EXPECT_EQ(tok->id_to_token(after[1]), "▁Once");
}

TEST(Tokenizer, Qwen2ChatTokensAndNfc) {
  SKIP_WITHOUT_SHARED_DATA();
  const auto tok = load_tokenizer(kShared / "tokenizers" / "qwen2");
  EXPECT_EQ(tok->eos_id(), 151645);
  EXPECT_EQ(tok->pad_id(), 151643);
  EXPECT_EQ(tok->bos_id(), std::nullopt);
  const auto ids = tok->encode("<|im_start|>user\nHi<|im_end|>", true);
  EXPECT_EQ(ids.front(), 151644) << "Qwen2 adds no BOS";
  EXPECT_EQ(ids.back(), 151645);
  EXPECT_EQ(tok->decode(ids, true), "user\nHi");
  // NFC: "e" + combining acute encodes like the precomposed "é".
  EXPECT_EQ(tok->encode("caf\x65\xCC\x81", false), tok->encode("caf\xC3\xA9", false));
}

TEST(Tokenizer, Gpt2DecodesExactBytes) {
  SKIP_WITHOUT_SHARED_DATA();
  const auto tok = load_tokenizer(kShared / "tokenizers" / "gpt2");
  EXPECT_EQ(tok->bos_id(), 50256);
  EXPECT_EQ(tok->encode("Hello world", true), (std::vector<int32_t>{15496, 995})) << "GPT-2 adds no BOS";
  // A 4-byte emoji is several byte tokens; decoding a prefix gives the raw bytes, not U+FFFD.
  const auto ids = tok->encode("🦙", false);
  ASSERT_GT(ids.size(), 1u);
  const std::string part = tok->decode(std::span(ids).first(1), false);
  EXPECT_EQ(std::string("🦙").rfind(part, 0), 0u);
  // A long run without spaces takes the heap-based merge path; same ids as piecewise reasoning.
  const std::string long_word(500, '=');
  EXPECT_EQ(tok->decode(tok->encode(long_word, false), false), long_word);
  EXPECT_THROW(tok->decode(std::vector<int32_t>{50257}, false), InputError);
  EXPECT_THROW(tok->encode("bad \xC3\x28 utf8", false), InputError);
}

// What `qtrain generate` prints: a decoded prefix may cut a character; shown text replaces each maximal
// ill-formed subpart by one U+FFFD, as Python's bytes.decode(errors="replace") does.
TEST(Utf8, ReplaceInvalidSubstitutesMaximalSubparts) {
  const std::string R = "\xEF\xBF\xBD";
  // The Unicode Standard's own example (ch. 3, Table 3-8; Python gives the same).
  EXPECT_EQ(utf8::replace_invalid("\x61\xF1\x80\x80\xE1\x80\xC2\x62\x80\x63\x80\xBF\x64"),
            "a" + R + R + R + "b" + R + "c" + R + R + "d");
  EXPECT_EQ(utf8::replace_invalid("\xF0\x9F\xA6"), R) << "a cut 4-byte emoji is one replacement";
  EXPECT_EQ(utf8::replace_invalid("\xE0\x80\xAF"), R + R + R) << "overlong: no valid prefix past the lead";
  EXPECT_EQ(utf8::replace_invalid("\xED\xA0\x80"), R + R + R) << "surrogate";
  EXPECT_EQ(utf8::replace_invalid("\xF4\x90\x80\x80"), R + R + R + R) << "above U+10FFFF";
  EXPECT_EQ(utf8::replace_invalid(""), "");
  // Valid text (every length class) passes through unchanged; the output is always valid.
  const std::string ok = "a\xC3\xA9\xE2\x82\xAC\xF0\x9F\xA6\x99";
  EXPECT_EQ(utf8::replace_invalid(ok), ok);
  const unsigned seed = std::random_device{}();
  std::mt19937 rng(seed);
  for (int t = 0; t < 2000; ++t) {
    std::string junk(rng() % 12, '\0');
    for (char& c : junk) c = static_cast<char>(rng() % 4 == 0 ? 0x80 + rng() % 0x40 : 0xC0 + rng() % 0x40);
    const std::string fixed = utf8::replace_invalid(junk);
    ASSERT_EQ(utf8::find_invalid(fixed), std::string::npos) << "seed " << seed;
    if (utf8::find_invalid(junk) == std::string::npos) ASSERT_EQ(fixed, junk) << "seed " << seed;
  }
}

// ---- bad input: each names the file at fault ----

class TokenizerBadInput : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("qtrain_tok_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  void write(const std::string& name, const std::string& content) { std::ofstream(dir_ / name, std::ios::binary) << content; }
  void expect_error_naming(const std::string& file, const std::string& also = "") {
    try {
      load_tokenizer(dir_);
      FAIL() << "expected an InputError naming " << file;
    } catch (const InputError& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find(file), std::string::npos) << msg;
      if (!also.empty()) {
        EXPECT_NE(msg.find(also), std::string::npos) << msg;
      }
    }
  }
  fs::path dir_;
};

TEST_F(TokenizerBadInput, MissingFiles) { expect_error_naming(dir_.string(), "no tokenizer found"); }

TEST_F(TokenizerBadInput, NotADirectory) {
  EXPECT_THROW(load_tokenizer(dir_ / "nope"), InputError);
}

TEST_F(TokenizerBadInput, MalformedTokenizerJsonNamesLine) {
  write("tokenizer.json", "{\n  \"model\": {\n    \"type\": \"BPE\",,\n  }\n}\n");
  expect_error_naming("tokenizer.json", ":3:");
}

TEST_F(TokenizerBadInput, TokenizerJsonUnsupportedModel) {
  write("tokenizer.json", R"({"model": {"type": "WordPiece", "vocab": {}}, "pre_tokenizer": {"type": "ByteLevel"}})");
  expect_error_naming("tokenizer.json", "model.type");
}

TEST_F(TokenizerBadInput, TokenizerJsonBadRegex) {
  write("tokenizer.json", R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},
    "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
      {"type": "Split", "pattern": {"Regex": "(unclosed"}, "behavior": "Isolated", "invert": false},
      {"type": "ByteLevel", "add_prefix_space": false, "use_regex": false}]}})");
  expect_error_naming("tokenizer.json", "pretokenizers[0]");
}

TEST_F(TokenizerBadInput, MalformedVocabJson) {
  write("vocab.json", "{\"a\": 0, \"b\": }");
  write("merges.txt", "#version: 0.2\na b\n");
  expect_error_naming("vocab.json", ":1:");
}

TEST_F(TokenizerBadInput, VocabJsonWrongType) {
  write("vocab.json", "{\"a\": \"zero\"}");
  write("merges.txt", "#version: 0.2\n");
  expect_error_naming("vocab.json", "expected a token id in [0, 2^24)");
}

TEST_F(TokenizerBadInput, MalformedMergesNamesLine) {
  write("vocab.json", R"({"a": 0, "b": 1, "ab": 2})");
  write("merges.txt", "#version: 0.2\na b\nab\n");
  expect_error_naming("merges.txt:3", "two tokens");
}

TEST_F(TokenizerBadInput, MergeOutsideVocabulary) {
  write("vocab.json", R"({"a": 0, "b": 1})");
  write("merges.txt", "#version: 0.2\na b\n");
  expect_error_naming("merges.txt:2", "not in the vocabulary");
}

TEST_F(TokenizerBadInput, VocabWithoutMerges) {
  write("vocab.json", R"({"a": 0})");
  expect_error_naming("merges.txt", "missing");
}

TEST_F(TokenizerBadInput, NotASentencepieceModel) {
  write("tokenizer.model", "this is not a protobuf at all, just text\n");
  expect_error_naming("tokenizer.model", "sentencepiece");
}

TEST_F(TokenizerBadInput, MalformedTokenizerConfig) {
  write("tokenizer.model", "x");
  write("tokenizer_config.json", R"({"add_bos_token": "yes"})");
  expect_error_naming("tokenizer_config.json", "add_bos_token");
}

// A negative control for the vector test itself: a tokenizer with a merge removed must fail it.
TEST(TokenizerVectors, NegativeControlBrokenMergesFail) {
  SKIP_WITHOUT_SHARED_DATA();
  const fs::path dir = fs::temp_directory_path() / ("qtrain_tok_broken_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  fs::copy_file(kShared / "tokenizers" / "gpt2" / "vocab.json", dir / "vocab.json");
  std::istringstream merges(slurp(kShared / "tokenizers" / "gpt2" / "merges.txt"));
  std::ofstream out(dir / "merges.txt", std::ios::binary);
  std::string line;
  for (int n = 0; std::getline(merges, line); ++n)
    if (n != 1) out << line << "\n";  // drop the best merge ("Ġ t")
  out.close();
  const auto tok = load_tokenizer(dir);
  int mismatches = 0;
  for (const auto& [text, ids] : read_vectors("gpt-2")) mismatches += tok->encode(text, false) != ids;
  fs::remove_all(dir);
  EXPECT_GT(mismatches, 0) << "a tokenizer missing its best merge must fail some vectors";
}

}  // namespace
}  // namespace qtrain
