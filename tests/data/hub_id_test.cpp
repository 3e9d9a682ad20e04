// Hub ids: which strings are Hub references, what they parse to, and which are local paths whatever
// they look like (data/hub/hub_id.h, data/hub/hub_resolve.h).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "data/error.h"
#include "data/hub/hub_id.h"
#include "data/hub/hub_resolve.h"
#include "tests/scratch_dir.h"

namespace qtrain::hub {
namespace {

TEST(HubId, RepoIdFollowsTheHubNamingRule) {
  for (const char* ok : {"huggyllama/llama-7b", "meta-llama/Llama-2-7b-hf", "a/b", "Org_1/name.v2", "TheBloke/Llama-2-7B-GPTQ"})
    EXPECT_TRUE(is_valid_repo_id(ok)) << ok;
  for (const char* bad : {"gpt2", "a/b/c", "/a", "a/", "-a/b", "a/b.", "a--b/c", "a/b..c", "a/b.git", "a b/c", "a/é", ""})
    EXPECT_FALSE(is_valid_repo_id(bad)) << bad;
  EXPECT_FALSE(is_valid_repo_id(std::string("a/") + std::string(97, 'x')));
  EXPECT_TRUE(is_valid_repo_id(std::string("a/") + std::string(96, 'x')));
}

TEST(HubId, CommitHashesAndRevisions) {
  EXPECT_TRUE(is_commit_hash("91df9b50963e5debc5eb33705c71078a0875b5ff"));
  EXPECT_FALSE(is_commit_hash("91df9b50963e5debc5eb33705c71078a0875b5f"));   // 39
  EXPECT_FALSE(is_commit_hash("91DF9B50963E5DEBC5EB33705C71078A0875B5FF"));  // upper case is a branch name
  EXPECT_TRUE(is_valid_revision("main"));
  EXPECT_TRUE(is_valid_revision("refs/pr/1"));
  for (const char* bad : {"", "../x", "a/../b", "/main", "main/", "a b", "a\\b"}) EXPECT_FALSE(is_valid_revision(bad)) << bad;
}

TEST(HubId, PathsInRepoStayInsideTheRepository) {
  for (const char* ok : {"config.json", "data/train.jsonl", "a/b/c.txt", "..hidden", "a..b.json", ".gitattributes"})
    EXPECT_TRUE(valid_path_in_repo(ok)) << ok;
  for (const char* bad : {"", "/home/u/cfg.json", "../../x.json", "a/../../x.json", "a/./b", "a//b", "a/", "..", ".", "a\\..\\b",
                          "a/..", "x\x01y"})
    EXPECT_FALSE(valid_path_in_repo(bad)) << bad;
  EXPECT_FALSE(valid_path_in_repo(std::string("ok.json\0/../../x", 17)));  // a NUL would cut the path short
}

TEST(HubId, ModelRefs) {
  auto r = parse_model_ref("huggyllama/llama-7b", "model.path");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->type, RepoType::kModel);
  EXPECT_EQ(r->repo_id, "huggyllama/llama-7b");
  EXPECT_EQ(r->revision, "main");
  EXPECT_EQ(r->display(), "huggyllama/llama-7b");
  r = parse_model_ref("org/name@v1.0", "m");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->revision, "v1.0");
  EXPECT_EQ(r->display(), "org/name@v1.0");
  r = parse_model_ref("hf://models/org/name@refs%2Fpr%2F3", "m");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->repo_id, "org/name");
  EXPECT_EQ(r->revision, "refs/pr/3");
  // Not ids (local paths): no error, just nullopt.
  for (const char* local : {"gpt2", "runs/quickstart/base", "a/b/c", "bad name/x", "-x/y"}) EXPECT_FALSE(parse_model_ref(local, "m")) << local;
}

TEST(HubId, MalformedHfUrlsAreUsageErrorsNamingTheSetting) {
  for (const char* bad : {"hf://gpt2", "hf://org/name/file.safetensors", "hf://datasets/org/name", "hf://org/na me", "hf://org/name@../x"}) {
    try {
      parse_model_ref(bad, "--model");
      ADD_FAILURE() << bad << " parsed";
    } catch (const UsageError& e) {
      EXPECT_NE(std::string(e.what()).find("--model: '" + std::string(bad) + "'"), std::string::npos) << e.what();
    }
  }
  EXPECT_THROW(parse_data_ref("hf://datasets/org/name/../x.jsonl", "data.files"), UsageError);
  EXPECT_THROW(parse_data_ref("hf://datasets/onlyname", "data.files"), UsageError);
}

TEST(HubId, DataRefs) {
  auto r = parse_data_ref("hf://datasets/timdettmers/openassistant-guanaco/openassistant_best_replies_train.jsonl", "data.files");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->type, RepoType::kDataset);
  EXPECT_EQ(r->repo_id, "timdettmers/openassistant-guanaco");
  EXPECT_EQ(r->revision, "main");
  EXPECT_EQ(r->path_in_repo, "openassistant_best_replies_train.jsonl");
  EXPECT_EQ(r->display(), "hf://datasets/timdettmers/openassistant-guanaco/openassistant_best_replies_train.jsonl");
  r = parse_data_ref("hf://datasets/org/name@abc/data/train.jsonl", "d");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->revision, "abc");
  EXPECT_EQ(r->path_in_repo, "data/train.jsonl");
  r = parse_data_ref("org/name", "d");  // a bare id: a dataset repo, all its data files
  ASSERT_TRUE(r);
  EXPECT_EQ(r->type, RepoType::kDataset);
  EXPECT_TRUE(r->path_in_repo.empty());
  r = parse_data_ref("hf://org/model/calib.txt", "d");  // hf:// without datasets/ is a model repo, as HfFileSystem has it
  ASSERT_TRUE(r);
  EXPECT_EQ(r->type, RepoType::kModel);
  // A missing local data file keeps its "no such file" error: never taken for a repo.
  for (const char* local : {"data/train.jsonl", "data/train.json", "x/y.txt", "a/b.parquet", "data/sub/train", "train.jsonl"})
    EXPECT_FALSE(parse_data_ref(local, "d")) << local;
}

TEST(HubResolve, ExistingPathsAndQuickstartPathsAreLocal) {
  test_tools::ScratchDir dir("hub-resolve");
  const auto cwd = std::filesystem::current_path();
  std::filesystem::current_path(dir.path);
  std::filesystem::create_directories("org/name");
  std::ofstream("org/file") << "x";
  EXPECT_FALSE(model_ref_for("org/name", "model.path"));           // an existing directory wins
  EXPECT_FALSE(data_ref_for("org/file", "data.files"));            // an existing file wins
  EXPECT_TRUE(model_ref_for("org/other", "model.path"));           // missing and id-shaped: the Hub
  EXPECT_FALSE(model_ref_for("runs/quickstart", "model.path", /*create_if_missing=*/true));
  EXPECT_FALSE(model_ref_for("./org/other", "model.path"));        // explicitly relative
  EXPECT_FALSE(model_ref_for("/org/other", "model.path"));         // absolute
  EXPECT_FALSE(model_ref_for("~/models", "model.path"));
  EXPECT_TRUE(model_ref_for("hf://org/name", "model.path"));       // hf:// always means the Hub
  EXPECT_TRUE(data_ref_for("hf://datasets/org/file/x.jsonl", "data.files"));
  std::filesystem::current_path(cwd);
}

}  // namespace
}  // namespace qtrain::hub
