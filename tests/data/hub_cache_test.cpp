// The Hugging Face cache layout and environment (data/hub/hub_cache.h, hub_settings.h, hub_snapshot.h's
// file choice): names as huggingface_hub writes them; the oracle test (tests/oracle/test_hub.py) checks a
// whole tree against snapshot_download's.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>

#include "data/error.h"
#include "data/hub/hub_cache.h"
#include "data/hub/hub_settings.h"
#include "data/hub/hub_snapshot.h"
#include "tests/scratch_dir.h"

namespace qtrain::hub {
namespace {
namespace fs = std::filesystem;

EnvLookup env_of(std::map<std::string, std::string> m) {
  return [m](const std::string& k) -> std::optional<std::string> {
    const auto it = m.find(k);
    return it == m.end() ? std::nullopt : std::optional<std::string>(it->second);
  };
}

TEST(HubCache, FolderNamesAndPaths) {
  EXPECT_EQ(HubCache::folder_name(RepoType::kModel, "huggyllama/llama-7b"), "models--huggyllama--llama-7b");
  EXPECT_EQ(HubCache::folder_name(RepoType::kDataset, "timdettmers/openassistant-guanaco"), "datasets--timdettmers--openassistant-guanaco");
  const HubCache c("/cache", RepoType::kModel, "org/name");
  EXPECT_EQ(c.blob("abc"), fs::path("/cache/models--org--name/blobs/abc"));
  EXPECT_EQ(c.incomplete("abc"), fs::path("/cache/models--org--name/blobs/abc.incomplete"));
  const std::string commit = "91df9b50963e5debc5eb33705c71078a0875b5ff";
  EXPECT_EQ(c.snapshot_file(commit, "sub/x.json"), fs::path("/cache/models--org--name/snapshots/" + commit + "/sub/x.json"));
  EXPECT_EQ(c.lock_file("abc"), fs::path("/cache/.locks/models--org--name/abc.lock"));
}

TEST(HubCache, RefsAndRelativeSnapshotLinks) {
  test_tools::ScratchDir dir("hub-cache");
  const HubCache c(dir.path, RepoType::kModel, "org/name");
  const std::string commit = "91df9b50963e5debc5eb33705c71078a0875b5ff";
  EXPECT_FALSE(c.read_ref("main"));
  c.write_ref("main", commit);
  EXPECT_EQ(c.read_ref("main"), commit);
  std::ifstream in(c.repo_dir() / "refs" / "main");
  std::string text((std::istreambuf_iterator<char>(in)), {});
  EXPECT_EQ(text, commit);  // no newline, as huggingface_hub writes it
  c.write_ref(commit, commit);  // a commit needs no ref
  EXPECT_FALSE(fs::exists(c.repo_dir() / "refs" / commit));
  // A ref that is not a commit hash is ignored, not trusted.
  std::ofstream(c.repo_dir() / "refs" / "bad") << "../../../etc";
  EXPECT_FALSE(c.read_ref("bad"));

  fs::create_directories(c.blob("e").parent_path());
  std::ofstream(c.blob("e")) << "content";
  c.link_snapshot_file(commit, "config.json", "e");
  c.link_snapshot_file(commit, "sub/dir/x.json", "e");
  EXPECT_EQ(fs::read_symlink(c.snapshot_file(commit, "config.json")), fs::path("../../blobs/e"));
  EXPECT_EQ(fs::read_symlink(c.snapshot_file(commit, "sub/dir/x.json")), fs::path("../../../../blobs/e"));
  std::ifstream via(c.snapshot_file(commit, "sub/dir/x.json"));
  std::string got;
  via >> got;
  EXPECT_EQ(got, "content");
  c.link_snapshot_file(commit, "config.json", "e");  // again: unchanged, no error
  // A stale entry (another blob) is replaced.
  std::ofstream(c.blob("f")) << "new";
  c.link_snapshot_file(commit, "config.json", "f");
  EXPECT_EQ(fs::read_symlink(c.snapshot_file(commit, "config.json")), fs::path("../../blobs/f"));
}

TEST(HubCache, SnapshotFilesNeverLeaveTheSnapshotFolder) {
  test_tools::ScratchDir dir("hub-cache-escape");
  const HubCache c(dir.path / "cache", RepoType::kDataset, "org/data");
  const std::string commit = "91df9b50963e5debc5eb33705c71078a0875b5ff";
  fs::create_directories(c.blob("e").parent_path());
  std::ofstream(c.blob("e")) << "content";
  for (const std::string& bad : std::vector<std::string>{"../../x.json", "a/../../../x.json", "/tmp/qtrain-hub-escape.json", "../" + commit + "x/y.json", ".."}) {
    try {
      c.link_snapshot_file(commit, bad, "e");
      ADD_FAILURE() << "linked '" << bad << "'";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("refusing the file name '" + bad + "'"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("org/data"), std::string::npos) << e.what();
    }
  }
  EXPECT_THROW(c.snapshot_file("not-a-commit/../..", "x.json"), Error);
  // Nothing was made outside the snapshot folder (only blobs/ exists beside it).
  EXPECT_FALSE(fs::exists("/tmp/qtrain-hub-escape.json"));
  EXPECT_FALSE(fs::exists(dir.path / "cache" / "x.json"));
  EXPECT_FALSE(fs::exists(c.repo_dir() / "x.json"));
  // Negative control: a nested name inside the repository links fine.
  c.link_snapshot_file(commit, "data/x.json", "e");
  EXPECT_TRUE(fs::is_symlink(c.snapshot_file(commit, "data/x.json")));
}

TEST(HubSettings, HuggingfaceHubPrecedence) {
  auto s = hub_settings_from_env(env_of({{"HOME", "/home/u"}}));
  EXPECT_EQ(s.cache_dir, fs::path("/home/u/.cache/huggingface/hub"));
  EXPECT_EQ(s.endpoint, "https://huggingface.co");
  EXPECT_FALSE(s.offline);
  EXPECT_FALSE(s.token);
  s = hub_settings_from_env(env_of({{"HOME", "/home/u"}, {"XDG_CACHE_HOME", "/xdg"}}));
  EXPECT_EQ(s.cache_dir, fs::path("/xdg/huggingface/hub"));
  s = hub_settings_from_env(env_of({{"HOME", "/home/u"}, {"XDG_CACHE_HOME", "/xdg"}, {"HF_HOME", "~/hf"}}));
  EXPECT_EQ(s.cache_dir, fs::path("/home/u/hf/hub"));
  s = hub_settings_from_env(env_of({{"HF_HOME", "/hf"}, {"HUGGINGFACE_HUB_CACHE", "/legacy"}}));
  EXPECT_EQ(s.cache_dir, fs::path("/legacy"));
  s = hub_settings_from_env(env_of({{"HF_HOME", "/hf"}, {"HUGGINGFACE_HUB_CACHE", "/legacy"}, {"HF_HUB_CACHE", "/c"}}));
  EXPECT_EQ(s.cache_dir, fs::path("/c"));
  s = hub_settings_from_env(env_of({{"HF_ENDPOINT", "http://127.0.0.1:8080//"}, {"HF_HUB_OFFLINE", "yes"}, {"HF_TOKEN", " hf_x \n"}}));
  EXPECT_EQ(s.endpoint, "http://127.0.0.1:8080");
  EXPECT_TRUE(s.offline);
  EXPECT_EQ(s.token, "hf_x");
  EXPECT_EQ(s.token_source, "HF_TOKEN");
  EXPECT_FALSE(hub_settings_from_env(env_of({{"HF_HUB_OFFLINE", "0"}})).offline);
  EXPECT_TRUE(hub_settings_from_env(env_of({{"TRANSFORMERS_OFFLINE", "1"}})).offline);
  // huggingface_hub's precedence: `HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE`: a set HF_HUB_OFFLINE decides.
  EXPECT_FALSE(hub_settings_from_env(env_of({{"HF_HUB_OFFLINE", "0"}, {"TRANSFORMERS_OFFLINE", "1"}})).offline);
  EXPECT_TRUE(hub_settings_from_env(env_of({{"HF_HUB_OFFLINE", ""}, {"TRANSFORMERS_OFFLINE", "1"}})).offline);
  // Unusable values fall back to the defaults with a warning, never an error.
  s = hub_settings_from_env(env_of({{"HF_HUB_ETAG_TIMEOUT", "soon"}, {"HF_HUB_DOWNLOAD_TIMEOUT", "-3"}, {"QTRAIN_HUB_DOWNLOAD_ATTEMPTS", "0"}}));
  EXPECT_EQ(s.metadata_timeout_s, 10);
  EXPECT_EQ(s.connect_timeout_s, 10);
  EXPECT_EQ(s.stall_timeout_s, 30);
  EXPECT_EQ(s.download_attempts, 5);
  ASSERT_EQ(s.warnings.size(), 3u);
  EXPECT_NE(s.warnings[0].find("HF_HUB_ETAG_TIMEOUT='soon'"), std::string::npos) << s.warnings[0];
  EXPECT_TRUE(hub_settings_from_env(env_of({{"HF_HUB_ETAG_TIMEOUT", "2.5"}})).warnings.empty());
  EXPECT_EQ(hub_settings_from_env(env_of({{"HF_HUB_ETAG_TIMEOUT", "2.5"}})).metadata_timeout_s, 2.5);
}

TEST(HubSettings, TokenFileThatLoginWrites) {
  test_tools::ScratchDir dir("hub-token");
  std::ofstream(dir.path / "token") << "hf_from_file\n";
  auto s = hub_settings_from_env(env_of({{"HF_HOME", dir.path.string()}}));
  EXPECT_EQ(s.token, "hf_from_file");
  EXPECT_EQ(s.token_source, (dir.path / "token").string());
  s = hub_settings_from_env(env_of({{"HF_HOME", dir.path.string()}, {"HF_TOKEN", "hf_env"}}));
  EXPECT_EQ(s.token, "hf_env");  // the variable wins over the file
}

TEST(HubSnapshot, ModelFilesAreWhatQtrainReads) {
  HubRef ref;
  ref.repo_id = "huggyllama/llama-7b";
  const std::vector<std::string> listing = {".gitattributes", "LICENSE", "README.md", "config.json", "generation_config.json",
                                            "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                                            "model.safetensors.index.json", "pytorch_model-00001-of-00002.bin",
                                            "pytorch_model.bin.index.json", "special_tokens_map.json", "tokenizer.json",
                                            "tokenizer.model", "tokenizer_config.json"};
  // Shards come from the index once it is local, so they are not chosen here.
  EXPECT_EQ(choose_files(ref, listing),
            (std::vector<std::string>{"config.json", "generation_config.json", "model.safetensors.index.json", "special_tokens_map.json",
                                      "tokenizer.json", "tokenizer.model", "tokenizer_config.json"}));
  EXPECT_EQ(shards_of_index(R"({"weight_map": {"a": "s2.safetensors", "b": "s1.safetensors", "c": "s1.safetensors"}})", "idx"),
            (std::vector<std::string>{"s1.safetensors", "s2.safetensors"}));
  EXPECT_THROW(shards_of_index(R"({"weight_map": {"a": "../../etc/passwd"}})", "idx"), InputError);
  EXPECT_THROW(shards_of_index("[]", "idx"), InputError);
  try {
    choose_files(ref, {"config.json", "pytorch_model.bin"});
    ADD_FAILURE() << "a .bin-only repo was accepted";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("no safetensors weights"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("pytorch_model.bin"), std::string::npos) << e.what();
  }
  EXPECT_THROW(choose_files(ref, {"model.safetensors"}), UsageError);  // no config.json
}

TEST(HubSnapshot, DatasetFilesPreferTheTrainSplit) {
  HubRef ref;
  ref.type = RepoType::kDataset;
  ref.repo_id = "timdettmers/openassistant-guanaco";
  EXPECT_EQ(choose_files(ref, {"README.md", ".gitattributes", "openassistant_best_replies_eval.jsonl", "openassistant_best_replies_train.jsonl"}),
            std::vector<std::string>{"openassistant_best_replies_train.jsonl"});
  EXPECT_EQ(choose_files(ref, {"README.md", "b.jsonl", "a.json", "dataset_infos.json", "trainer.json"}),
            (std::vector<std::string>{"a.json", "b.jsonl", "trainer.json"}));  // "trainer" is no train split
  EXPECT_EQ(choose_files(ref, {"data/train-00000-of-00002.jsonl", "data/test.jsonl", "data/train-00001-of-00002.jsonl"}),
            (std::vector<std::string>{"data/train-00000-of-00002.jsonl", "data/train-00001-of-00002.jsonl"}));
  EXPECT_THROW(choose_files(ref, {"README.md", "data/train.parquet"}), UsageError);
  ref.path_in_repo = "x/y.jsonl";  // a named file is taken as named (the Hub's 404 names it if absent)
  EXPECT_EQ(choose_files(ref, {}), std::vector<std::string>{"x/y.jsonl"});
}

}  // namespace
}  // namespace qtrain::hub
