#include "trainer/cli/quickstart_model.h"

#include <ATen/CPUGeneratorImpl.h>
#include <sentencepiece_trainer.h>

#include <fstream>

#include <nlohmann/json.hpp>

#include "data/io/atomic_file.h"
#include "data/error.h"
#include "data/io/hf_config.h"
#include "data/io/safetensors.h"
#include "trainer/model/model.h"

// Exported by libsentencepiece (declared in its common.h, which is not an installed header).
namespace sentencepiece::logging {
int GetMinLogLevel();
void SetMinLogLevel(int v);
}  // namespace sentencepiece::logging

namespace qtrain {
namespace fs = std::filesystem;

namespace {

// Every string value of every JSON record (JSONL or a JSON array): the tokenizer's training text.
void collect_strings(const nlohmann::json& j, std::ofstream& out) {
  if (j.is_string()) {
    std::string s = j.get<std::string>();
    for (char& c : s)
      if (c == '\n' || c == '\r') c = ' ';
    if (!s.empty()) out << s << "\n";
  } else if (j.is_array() || j.is_object()) {
    for (const auto& v : j) collect_strings(v, out);
  }
}

}  // namespace

void create_quickstart_model(const fs::path& dir, const DataConfig& data, uint64_t seed, const QuickstartModelShape& shape) {
  AtomicDirectory out(dir);  // appears under `dir` only when complete; removed if anything below throws
  const fs::path& tmp = out.path();

  // 1. Tokenizer: a byte-fallback BPE sentencepiece model on the data's text (Llama-2 style ids).
  const fs::path corpus = tmp / "corpus.txt";
  {
    std::ofstream text(corpus);
    for (const auto& f : data.files) {
      std::ifstream in(f.path);
      if (!in) throw InputError(f.path.string() + ": cannot open (needed to train the quickstart tokenizer)");
      const bool jsonl = f.path.extension() == ".jsonl";
      if (jsonl) {
        for (std::string line; std::getline(in, line);)
          if (!line.empty()) collect_strings(nlohmann::json::parse(line, nullptr, false), text);
      } else {
        collect_strings(nlohmann::json::parse(in, nullptr, false), text);
      }
    }
  }
  const std::string args = "--input=" + corpus.string() + " --model_prefix=" + (tmp / "tokenizer").string() +
                           " --vocab_size=" + std::to_string(shape.vocab_size) +
                           " --model_type=bpe --character_coverage=1.0 --byte_fallback=true"
                           " --unk_id=0 --bos_id=1 --eos_id=2 --pad_id=3 --pad_piece=<pad>"
                           " --split_digits=true --add_dummy_prefix=true --remove_extra_whitespaces=false"
                           " --num_threads=1 --minloglevel=2";
  // Train() logs "Running command: ..." at INFO before it parses --minloglevel: lower the level first.
  const int log_level = sentencepiece::logging::GetMinLogLevel();
  sentencepiece::logging::SetMinLogLevel(2);
  const auto status = sentencepiece::SentencePieceTrainer::Train(args);
  sentencepiece::logging::SetMinLogLevel(log_level);
  if (!status.ok()) throw std::runtime_error("quickstart: training the tokenizer failed: " + status.ToString());
  fs::remove(tmp / "tokenizer.vocab");
  fs::remove(corpus);
  nlohmann::json tc = {{"tokenizer_class", "LlamaTokenizer"}, {"bos_token", "<s>"}, {"eos_token", "</s>"},
                       {"unk_token", "<unk>"}, {"pad_token", "<pad>"}, {"add_bos_token", true},
                       {"add_eos_token", false}, {"legacy", false}, {"model_max_length", 512}};
  write_file_atomic(tmp / "tokenizer_config.json", tc.dump(2) + "\n");

  // 2. Model: config.json, then the model's own random initialiser (trainer/model/random_init.h) on the
  // configuration parsed back from that file, so the weights written are exactly what it describes.
  const int64_t hd = shape.hidden_size / shape.num_heads;
  nlohmann::json cfg = {{"architectures", {"LlamaForCausalLM"}}, {"model_type", "llama"},
                        {"vocab_size", shape.vocab_size}, {"hidden_size", shape.hidden_size},
                        {"intermediate_size", shape.intermediate_size}, {"num_hidden_layers", shape.num_layers},
                        {"num_attention_heads", shape.num_heads}, {"num_key_value_heads", shape.num_kv_heads},
                        {"head_dim", hd}, {"max_position_embeddings", 512}, {"hidden_act", "silu"},
                        {"rms_norm_eps", 1e-5}, {"rope_theta", 10000.0}, {"tie_word_embeddings", false},
                        {"bos_token_id", 1}, {"eos_token_id", 2}, {"pad_token_id", 3}, {"torch_dtype", "float32"}};
  const std::string cfg_text = cfg.dump(2) + "\n";
  write_file_atomic(tmp / "config.json", cfg_text);
  LoadOptions lo;  // float32 on the CPU, not quantized: the base is written in full precision
  const LlamaModel model = LlamaModel::random(parse_model_config_text(cfg_text, (tmp / "config.json").string()), lo,
                                              at::make_generator<at::CPUGeneratorImpl>(seed));
  safetensors::save(tmp / "model.safetensors", model.state_tensors());
  out.commit();
}

}  // namespace qtrain
