// The bad-input catalog (issue 8, "Faults, tested in CI"): one row per bad input — recipes and the
// command line, model directories, tokenizers, datasets, checkpoints and runtime conditions (an
// unwritable output_dir, a full disk) — each run through the real qtrain binary. Every row must end
// with a clean exit code (2 usage or config, 3 bad input data, 1 anything else, as README.md says;
// never a signal), an error that names the file, key, tensor or line at fault, and nothing that was
// already on disk lost: each case starts from a copy of a finished 2-step run (its checkpoints and
// adapter) and resumes it for 2 more steps, so a failure that destroyed earlier work would show.
#include <gtest/gtest.h>

#include <functional>

#include <nlohmann/json.hpp>

#include "data/io/safetensors.h"
#include "tests/trainer/faults/fault_harness.h"

namespace qtrain::faults {
namespace {

// Paths are relative: every case runs in its own copy of the good directory, so the recipe (and its
// hash, which a resume checks) is the same in all of them.
constexpr const char* kRecipe = R"(model:
  path: base
  target_modules: all-linear
quantization:
  enabled: true
  blocksize: 64
lora:
  r: 4
  alpha: 8
  dropout: 0.0
data:
  files: [data.jsonl]
  format: alpaca
  max_seq_len: 160
  packing: false
  eval_fraction: 0
  cache_dir: cache
training:
  micro_batch_size: 2
  max_steps: 2
  learning_rate: 1.0e-3
  schedule: cosine
  device: cpu
schedule:
  log_every: 1
  eval_every: 0
  save_every: 1
  keep_last: 2
output_dir: run
)";

// Resume the finished 2-step run for 2 more steps: what every case does unless it says otherwise.
const std::string kResume = "train recipe.yaml --resume --set training.max_steps=4";

void write_data(const fs::path& file) {
  std::ofstream out(file);
  for (int i = 0; i < 24; ++i)
    out << nlohmann::json{{"instruction", "Name the colour of item " + std::to_string(i) + "."},
                          {"input", ""},
                          {"output", i % 2 ? "The item is red." : "The item is blue."}}
               .dump()
        << "\n";
}

// Replaces the one occurrence of `from` in a file.
void edit(const fs::path& file, const std::string& from, const std::string& to) {
  std::string text = read_bytes(file);
  const auto at = text.find(from);
  ASSERT_NE(at, std::string::npos) << "'" << from << "' not in " << file;
  text.replace(at, from.size(), to);
  write_bytes(file, text);
}

void edit_json(const fs::path& file, const std::function<void(nlohmann::json&)>& patch) {
  nlohmann::json j = nlohmann::json::parse(read_bytes(file));
  patch(j);
  write_bytes(file, j.dump(2));
}

// The model's tensors as owned copies (the file is rewritten afterwards).
std::map<std::string, at::Tensor> load_weights(const fs::path& file) {
  auto f = safetensors::File::open(file);
  std::map<std::string, at::Tensor> w;
  for (const auto& name : f->names()) w[name] = f->tensor(name).clone();
  return w;
}

void rewrite_weights(const fs::path& file, const std::function<void(std::map<std::string, at::Tensor>&)>& patch) {
  auto w = load_weights(file);
  patch(w);
  fs::remove(file);
  safetensors::save(file, w);
}

// Applies `patch` to a safetensors file's JSON header, keeping the data bytes.
void rewrite_header(const fs::path& file, const std::function<void(nlohmann::json&)>& patch) {
  const std::string bytes = read_bytes(file);
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  nlohmann::json h = nlohmann::json::parse(bytes.substr(8, n));
  patch(h);
  std::string json = h.dump();
  json.append((8 - json.size() % 8) % 8, ' ');
  const uint64_t m = json.size();
  write_bytes(file, std::string(reinterpret_cast<const char*>(&m), 8) + json + bytes.substr(8 + n));
}

void truncate_to(const fs::path& file, double fraction) {
  fs::resize_file(file, static_cast<uintmax_t>(static_cast<double>(fs::file_size(file)) * fraction));
}

struct BadInput {
  std::string name;
  std::function<void(const fs::path&)> make;  // applied to a copy of the good directory
  std::string args;                            // qtrain's arguments, run in that copy
  int code;                                    // the documented exit code
  std::vector<std::string> says;               // what the error must name
  std::string shell_prefix = "";               // limits set before exec (ulimit, trap)
};

// Logs may grow or be rewritten by a run that fails later on; everything else must survive.
bool is_log(const std::string& relative) {
  return relative == "run/metrics.jsonl" || relative == "run/config.yaml" || relative.rfind("run/cache/", 0) == 0 ||
         relative.rfind("cache/", 0) == 0 || relative.rfind("run/events.out.tfevents.", 0) == 0 || relative == "run/report.html" ||
         relative == "run/data_report.json";
}

// One good directory: a quick-start model (created by qtrain: random Llama + sentencepiece tokenizer),
// data, the recipe, and a finished 2-step run with checkpoints step-1 and step-2. (Built in the test,
// not in SetUpTestSuite: gtest reports a failed SetUpTestSuite as skipped tests.)
void make_good_dir(const fs::path& scratch, const fs::path& good) {
  fs::create_directories(good);
  write_bytes(good / "recipe.yaml", kRecipe);
  write_data(good / "data.jsonl");
  const fs::path quickstart_data = fs::path(QTRAIN_SOURCE_DIR) / "recipes" / "quickstart" / "train.jsonl";
  const Outcome create = run_qtrain(good, "train recipe.yaml --dry-run --set model.create_if_missing=true --set data.files=[" +
                                              quickstart_data.string() + "] --set data.max_seq_len=256 --set data.cache_dir=" +
                                              (scratch / "create-cache").string());
  ASSERT_EQ(create.exit_code, 0) << "creating the quick-start model: " << create.describe() << "\n" << create.output;
  const Outcome run = run_qtrain(good, "train recipe.yaml");
  ASSERT_EQ(run.exit_code, 0) << "the good run: " << run.describe() << "\n" << run.output;
  for (const char* step : {"step-1", "step-2"})
    ASSERT_TRUE(fs::exists(good / "run" / "checkpoints" / step / "trainer_state.h5")) << step << " missing:\n" << run.output;
  ASSERT_TRUE(fs::exists(good / "run" / "adapter" / "adapter_model.safetensors")) << run.output;
}

std::vector<BadInput> catalog() {
  const auto recipe = [](const std::string& from, const std::string& to) {
    return [=](const fs::path& d) { edit(d / "recipe.yaml", from, to); };
  };
  const auto config = [](std::function<void(nlohmann::json&)> patch) {
    return [=](const fs::path& d) { edit_json(d / "base" / "config.json", patch); };
  };
  const auto weights = [](std::function<void(std::map<std::string, at::Tensor>&)> patch) {
    return [=](const fs::path& d) { rewrite_weights(d / "base" / "model.safetensors", patch); };
  };
  const auto header = [](std::function<void(nlohmann::json&)> patch) {
    return [=](const fs::path& d) { rewrite_header(d / "base" / "model.safetensors", patch); };
  };
  const auto data_line = [](int line, const std::string& text) {  // 1-based
    return [=](const fs::path& d) {
      std::ifstream in(d / "data.jsonl");
      std::string out, l;
      for (int i = 1; std::getline(in, l); ++i) out += (i == line ? text : l) + "\n";
      write_bytes(d / "data.jsonl", out);
    };
  };
  const auto nothing = [](const fs::path&) {};
  const std::string ck = "run/checkpoints/step-2/";
  const std::string q0 = "model.layers.0.self_attn.q_proj.weight";
  const std::string up1 = "model.layers.1.mlp.up_proj.weight";

  return {
      // ---- recipes and the command line: 2, naming the file and line, the key, or the option ----
      {"recipe_unknown_key", recipe("learning_rate:", "learnin_rate:"), kResume, 2,
       {"recipe.yaml:21", "unknown key 'training.learnin_rate'", "did you mean 'training.learning_rate'"}},
      {"recipe_unknown_section", recipe("output_dir: run", "optimiser:\n  name: adamw\noutput_dir: run"), kResume, 2,
       {"recipe.yaml:", "optimiser.name", "did you mean 'optimizer.name'"}},
      {"recipe_wrong_type", recipe("micro_batch_size: 2", "micro_batch_size: [2]"), kResume, 2,
       {"recipe.yaml:", "training.micro_batch_size", "expected an integer"}},
      {"recipe_not_a_number", recipe("learning_rate: 1.0e-3", "learning_rate: fast"), kResume, 2,
       {"recipe.yaml:", "training.learning_rate", "'fast'"}},
      {"recipe_bad_enum", recipe("schedule: cosine", "schedule: cosinus"), kResume, 2,
       {"recipe.yaml:", "training.schedule", "'cosinus' is not one of: constant, linear, cosine"}},
      {"recipe_bad_data_enum", recipe("format: alpaca", "format: alpaka"), kResume, 2, {"recipe.yaml:", "data.format", "'alpaka'"}},
      {"recipe_bad_bool", recipe("packing: false", "packing: maybe"), kResume, 2, {"recipe.yaml:", "data.packing", "'maybe'"}},
      {"recipe_out_of_range", recipe("dropout: 0.0", "dropout: 1.5"), kResume, 2, {"recipe.yaml", "lora.dropout", "[0, 1)"}},
      {"recipe_bad_blocksize", recipe("blocksize: 64", "blocksize: 100"), kResume, 2, {"recipe.yaml", "quantization.blocksize", "100"}},
      {"recipe_unknown_target_module", recipe("target_modules: all-linear", "target_modules: [qkv_proj]"), kResume, 2,
       {"recipe.yaml", "model.target_modules", "qkv_proj"}},
      {"recipe_not_yaml", recipe("output_dir: run", "output_dir: [run"), kResume, 2, {"recipe.yaml:", "not valid YAML"}},
      {"recipe_not_a_mapping", [](const fs::path& d) { write_bytes(d / "recipe.yaml", "- model\n- data\n"); }, kResume, 2,
       {"recipe.yaml", "mapping"}},
      {"recipe_missing", nothing, "train no-such-recipe.yaml", 2, {"no-such-recipe.yaml"}},
      {"recipe_no_data_files", recipe("  files: [data.jsonl]\n", ""), kResume, 2, {"recipe.yaml", "data.files"}},
      {"model_path_missing", recipe("path: base", "path: no-such-model"), kResume, 2, {"model.path", "no-such-model"}},
      {"data_file_missing", recipe("files: [data.jsonl]", "files: [no-such-data.jsonl]"), kResume, 2,
       {"no-such-data.jsonl", "no such dataset file"}},
      {"set_without_value", nothing, kResume + " --set training.max_steps", 2, {"--set 'training.max_steps'", "key=value"}},
      {"set_unknown_key", nothing, kResume + " --set lora.rank=8", 2, {"--set", "unknown key 'lora.rank'", "did you mean 'lora.r'"}},
      {"set_wrong_type", nothing, kResume + " --set lora.r=eight", 2, {"--set", "lora.r", "expected an integer"}},
      {"set_not_yaml", nothing, kResume + " --set 'lora.r=[8'", 2, {"--set 'lora.r=[8'", "not valid YAML"}},
      {"unknown_option", nothing, kResume + " --frobnicate", 2, {"--frobnicate"}},
      {"two_recipes", nothing, "train recipe.yaml other.yaml", 2, {"unexpected argument 'other.yaml'"}},

      // ---- model directories: 3, naming the file and the key or tensor ----
      {"config_missing", [](const fs::path& d) { fs::remove(d / "base" / "config.json"); }, kResume, 3, {"config.json"}},
      {"config_not_json", [](const fs::path& d) { write_bytes(d / "base" / "config.json", "{\"model_type\": \"llama\",\n  \"hidden_size\": }"); },
       kResume, 3, {"config.json"}},
      {"config_unsupported_model_type", config([](auto& c) { c["model_type"] = "falcon"; }), kResume, 3,
       {"config.json", "model_type", "falcon"}},
      {"config_missing_key", config([](auto& c) { c.erase("num_attention_heads"); }), kResume, 3,
       {"config.json", "num_attention_heads"}},
      {"config_wrong_type", config([](auto& c) { c["hidden_size"] = "wide"; }), kResume, 3, {"config.json", "hidden_size"}},
      {"config_impossible_heads", config([](auto& c) { c["num_key_value_heads"] = 3; }), kResume, 3,
       {"config.json", "num_key_value_heads"}},
      {"weights_missing", [](const fs::path& d) { fs::remove(d / "base" / "model.safetensors"); }, kResume, 3, {"model.safetensors"}},
      {"weights_truncated", [](const fs::path& d) { truncate_to(d / "base" / "model.safetensors", 0.9); }, kResume, 3,
       {"model.safetensors"}},
      {"weights_short_header", [](const fs::path& d) { write_bytes(d / "base" / "model.safetensors", "\x10\x00\x00"); }, kResume, 3,
       {"model.safetensors"}},
      {"weights_header_not_json",
       [](const fs::path& d) {
         std::string b = read_bytes(d / "base" / "model.safetensors");
         b.replace(8, 6, "<html>");
         write_bytes(d / "base" / "model.safetensors", b);
       },
       kResume, 3, {"model.safetensors"}},
      {"weights_unknown_dtype", header([](auto& h) { h["model.norm.weight"]["dtype"] = "F4"; }), kResume, 3,
       {"model.safetensors", "model.norm.weight", "F4"}},
      {"weights_wrong_shape", weights([up1](auto& w) { w[up1] = at::zeros({w[up1].size(0) + 1, w[up1].size(1)}); }), kResume, 3,
       {"base", up1, "config.json"}},
      {"weights_missing_tensor", weights([up1](auto& w) { w.erase(up1); }), kResume, 3, {up1}},
      {"weights_nan", weights([q0](auto& w) { w[q0][3][5] = NAN; }), kResume, 3, {"model.safetensors", q0}},
      {"weights_inf", weights([up1](auto& w) { w[up1][0][0] = -INFINITY; }), kResume, 3, {"model.safetensors", up1}},
      {"shard_missing",
       [](const fs::path& d) {
         const auto w = load_weights(d / "base" / "model.safetensors");
         fs::remove(d / "base" / "model.safetensors");
         safetensors::save_sharded(d / "base", w, 1 << 20);
         fs::remove(d / "base" / "model-00002-of-00004.safetensors");
       },
       kResume, 3, {"model.safetensors.index.json", "model-00002-of-00004.safetensors"}},
      {"shard_index_not_json",
       [](const fs::path& d) {
         const auto w = load_weights(d / "base" / "model.safetensors");
         fs::remove(d / "base" / "model.safetensors");
         safetensors::save_sharded(d / "base", w, 1 << 20);
         write_bytes(d / "base" / "model.safetensors.index.json", "{\"weight_map\": {");
       },
       kResume, 3, {"model.safetensors.index.json"}},

      // ---- tokenizers: 3, naming the file ----
      {"tokenizer_missing", [](const fs::path& d) { fs::remove(d / "base" / "tokenizer.model"); }, kResume, 3, {"base", "no tokenizer"}},
      {"tokenizer_model_garbage", [](const fs::path& d) { write_bytes(d / "base" / "tokenizer.model", std::string(300, '\x7f')); },
       kResume, 3, {"tokenizer.model"}},
      {"tokenizer_model_truncated", [](const fs::path& d) { truncate_to(d / "base" / "tokenizer.model", 0.5); }, kResume, 3,
       {"tokenizer.model"}},
      {"tokenizer_model_empty", [](const fs::path& d) { write_bytes(d / "base" / "tokenizer.model", ""); }, kResume, 3,
       {"tokenizer.model"}},
      {"tokenizer_json_not_json",
       [](const fs::path& d) {
         fs::remove(d / "base" / "tokenizer.model");
         write_bytes(d / "base" / "tokenizer.json", "{\"model\": {\"type\": \"BPE\", \"vocab\": {");
       },
       kResume, 3, {"tokenizer.json"}},
      {"tokenizer_json_unsupported",
       [](const fs::path& d) {
         fs::remove(d / "base" / "tokenizer.model");
         write_bytes(d / "base" / "tokenizer.json", R"({"model": {"type": "Unigram", "vocab": [["a", 0.0]]}})");
       },
       kResume, 3, {"tokenizer.json", "Unigram"}},
      {"tokenizer_merges_without_vocab",
       [](const fs::path& d) {
         fs::remove(d / "base" / "tokenizer.model");
         write_bytes(d / "base" / "merges.txt", "#version: 0.2\na b\n");
       },
       kResume, 3, {"vocab.json"}},
      {"tokenizer_config_not_json", [](const fs::path& d) { write_bytes(d / "base" / "tokenizer_config.json", "{\"bos_token\": "); },
       kResume, 3, {"tokenizer_config.json"}},

      // ---- datasets: 3, naming the file and the line ----
      {"data_bad_json_line", data_line(3, "{\"instruction\": \"x\", "), kResume, 3, {"data.jsonl:3", "malformed JSON"}},
      {"data_missing_field", data_line(5, R"({"instruction": "Say hi.", "input": ""})"), kResume, 3, {"data.jsonl:5", "output"}},
      {"data_wrong_field_type", data_line(7, R"({"instruction": 7, "input": "", "output": "seven"})"), kResume, 3,
       {"data.jsonl:7", "instruction"}},
      {"data_not_an_object", data_line(2, "[1, 2, 3]"), kResume, 3, {"data.jsonl:2", "object"}},
      {"data_invalid_utf8", data_line(4, "{\"instruction\": \"caf\xe9\", \"input\": \"\", \"output\": \"ok\"}"), kResume, 3,
       {"data.jsonl:4", "UTF-8"}},
      {"data_wrong_format", recipe("format: alpaca", "format: messages"), kResume, 3, {"data.jsonl:1", "messages"}},
      {"data_empty_file", [](const fs::path& d) { write_bytes(d / "data.jsonl", ""); }, kResume, 3, {"data.jsonl", "empty"}},
      {"data_json_array_truncated",
       [](const fs::path& d) {
         edit(d / "recipe.yaml", "files: [data.jsonl]", "files: [data.json]");
         write_bytes(d / "data.json", "[\n  {\"instruction\": \"a\", \"input\": \"\", \"output\": \"b\"},\n  {\"instruction\": ");
       },
       kResume, 3, {"data.json"}},

      // ---- checkpoints: resuming what cannot be resumed ----
      {"checkpoint_of_another_recipe", nothing, kResume + " --set lora.r=8", 2, {"step-2", "different recipe"}},
      {"checkpoint_older_than_latest", nothing, "train recipe.yaml --resume=run/checkpoints/step-1 --set training.max_steps=4", 2,
       {"step-1", "step-2"}},
      {"checkpoint_dir_missing", nothing, "train recipe.yaml --resume=run/checkpoints/step-9 --set training.max_steps=4", 2, {"step-9"}},
      {"run_exists_without_resume", nothing, "train recipe.yaml --set training.max_steps=4", 2, {"run", "--resume"}},
      {"trainer_state_garbage", [=](const fs::path& d) { write_bytes(d / ck / "trainer_state.h5", std::string(4096, 'x')); }, kResume, 3,
       {"trainer_state.h5"}},
      {"trainer_state_truncated", [=](const fs::path& d) { truncate_to(d / ck / "trainer_state.h5", 0.5); }, kResume, 3,
       {"trainer_state.h5"}},
      {"checkpoint_adapter_truncated", [=](const fs::path& d) { truncate_to(d / ck / "adapter/adapter_model.safetensors", 0.5); },
       kResume, 3, {"adapter_model.safetensors"}},
      {"checkpoint_adapter_config_not_json", [=](const fs::path& d) { write_bytes(d / ck / "adapter/adapter_config.json", "{\"r\": "); },
       kResume, 3, {"adapter_config.json"}},

      // ---- runtime conditions: 1, naming the path ----
      {"output_dir_under_a_file", [](const fs::path& d) { write_bytes(d / "blocker", "a file, not a directory\n"); },
       "train recipe.yaml --set output_dir=blocker/run", 1, {"blocker/run"}},
      {"output_dir_is_a_file", [](const fs::path& d) { write_bytes(d / "blocker", "a file, not a directory\n"); },
       "train recipe.yaml --set output_dir=blocker", 1, {"blocker"}},
      // A full disk, as a file-size limit: writes fail with EFBIG (SIGXFSZ ignored, as a full disk does
      // not signal). 1 block: the first file written (config.yaml) fails; 64 blocks: the checkpoint.
      {"disk_full_at_start", nothing, kResume, 1, {"run/config.yaml"}, "trap '' XFSZ; ulimit -f 1;"},
      {"disk_full_at_checkpoint", nothing, kResume, 1, {"run/checkpoints"}, "trap '' XFSZ; ulimit -f 64;"},
  };
}

TEST(BadInputCatalog, EachBadInputFailsCleanlyNamingTheCulpritAndLosesNothing) {
  // Negative control: the snapshot comparison sees a changed and a deleted file.
  ASSERT_EQ(lost_files({{"a", "1"}, {"b", "2"}}, {{"a", "x"}}), "  a: changed\n  b: deleted\n");
  ScratchDir scratch("bad-input");
  const fs::path good = scratch.path / "good";
  ASSERT_NO_FATAL_FAILURE(make_good_dir(scratch.path, good));
  const auto cases = catalog();
  std::cout << cases.size() << " bad inputs" << std::endl;
  EXPECT_GE(cases.size(), 40u);
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    const fs::path dir = scratch.path / c.name;
    fs::copy(good, dir, fs::copy_options::recursive);
    c.make(dir);
    if (::testing::Test::HasFatalFailure()) return;
    const auto before = snapshot(dir);
    const Outcome o = run_qtrain(dir, c.args, c.shell_prefix);
    if (std::getenv("QTRAIN_CATALOG_VERBOSE")) {  // the messages, for a reviewer
      const auto at = o.output.find("qtrain: error: ");
      std::cout << c.name << " -> " << o.describe() << ": " << (at == std::string::npos ? o.output : o.output.substr(at)) << std::flush;
    }
    const std::string where = c.name + " (qtrain " + c.args + "): " + o.describe() + "\n" + o.output;
    EXPECT_EQ(o.signal, 0) << where;
    EXPECT_EQ(o.exit_code, c.code) << where;
    EXPECT_NE(o.output.find("qtrain: error: "), std::string::npos) << where;
    for (const auto& s : c.says) EXPECT_NE(o.output.find(s), std::string::npos) << "expected '" << s << "' in the error of " << where;
    auto after = snapshot(dir);
    std::map<std::string, std::string> kept;
    for (const auto& [name, bytes] : before)
      if (!is_log(name)) kept[name] = bytes;
    const std::string lost = lost_files(kept, after);
    EXPECT_TRUE(lost.empty()) << c.name << " lost files that were on disk before it ran:\n" << lost << where;
    fs::remove_all(dir);
  }
}

}  // namespace
}  // namespace qtrain::faults
