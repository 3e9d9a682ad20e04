// The env:// rendezvous variables: torchrun's, Slurm's, what wins when both are set, every incomplete
// or inconsistent launch refused with the variable named, Slurm node lists, and the rank's CUDA device.
// Pure parsing: no process group is made (tests/oracle/test_distributed.py launches real ranks).
#include <gtest/gtest.h>

#include <map>

#include "data/error.h"
#include "trainer/distributed_env.h"

namespace qtrain {
namespace {

EnvLookup env_of(std::map<std::string, std::string> vars) {
  return [vars](const std::string& name) -> std::optional<std::string> {
    auto it = vars.find(name);
    if (it == vars.end()) return std::nullopt;
    return it->second;
  };
}

std::string usage_error(const std::map<std::string, std::string>& vars) {
  try {
    read_launch_env(env_of(vars));
  } catch (const UsageError& e) {
    return e.what();
  }
  return "(no error)";
}

const std::map<std::string, std::string> kTorchrun = {{"RANK", "3"},        {"WORLD_SIZE", "8"},           {"LOCAL_RANK", "1"},
                                                      {"LOCAL_WORLD_SIZE", "2"}, {"MASTER_ADDR", "node7"}, {"MASTER_PORT", "29511"},
                                                      {"TORCHELASTIC_USE_AGENT_STORE", "True"}, {"TORCHELASTIC_RESTART_COUNT", "2"}};

TEST(DistributedEnv, NoLauncherIsOneProcess) { EXPECT_FALSE(read_launch_env(env_of({{"PATH", "/bin"}}))); }

TEST(DistributedEnv, TorchrunVariables) {
  const auto e = read_launch_env(env_of(kTorchrun));
  ASSERT_TRUE(e);
  EXPECT_EQ(e->launcher, "torchrun");
  EXPECT_EQ(e->rank, 3);
  EXPECT_EQ(e->world_size, 8);
  EXPECT_EQ(e->local_rank, 1);
  EXPECT_EQ(e->local_world_size, 2);
  EXPECT_EQ(e->where(), "node7:29511");
  EXPECT_TRUE(e->agent_store);
  EXPECT_EQ(e->restart_count, 2);
}

TEST(DistributedEnv, TorchrunWinsOverSlurm) {
  auto vars = kTorchrun;
  vars["SLURM_PROCID"] = "0";
  vars["SLURM_NTASKS"] = "2";
  vars["SLURM_JOB_NODELIST"] = "other[1-2]";
  const auto e = read_launch_env(env_of(vars));
  ASSERT_TRUE(e);
  EXPECT_EQ(e->launcher, "torchrun");
  EXPECT_EQ(e->master_addr, "node7");
}

TEST(DistributedEnv, SlurmVariables) {
  const auto e = read_launch_env(env_of({{"SLURM_PROCID", "5"},
                                         {"SLURM_NTASKS", "8"},
                                         {"SLURM_LOCALID", "1"},
                                         {"SLURM_NTASKS_PER_NODE", "4"},
                                         {"SLURM_JOB_NODELIST", "gpu[03-04],gpu9"}}));
  ASSERT_TRUE(e);
  EXPECT_EQ(e->launcher, "slurm");
  EXPECT_EQ(e->rank, 5);
  EXPECT_EQ(e->world_size, 8);
  EXPECT_EQ(e->local_rank, 1);
  EXPECT_EQ(e->local_world_size, 4);
  EXPECT_EQ(e->master_addr, "gpu03");
  EXPECT_EQ(e->master_port, 29500);  // torch's default
  EXPECT_FALSE(e->agent_store);
}

TEST(DistributedEnv, SlurmTakesMasterAddrAndPortFromTheJobScript) {
  const auto e = read_launch_env(env_of({{"SLURM_PROCID", "0"},
                                         {"SLURM_NTASKS", "2"},
                                         {"SLURM_TASKS_PER_NODE", "2(x1)"},
                                         {"SLURM_JOB_NODELIST", "a1"},
                                         {"MASTER_ADDR", "10.0.0.5"},
                                         {"MASTER_PORT", "12345"}}));
  ASSERT_TRUE(e);
  EXPECT_EQ(e->where(), "10.0.0.5:12345");
  EXPECT_EQ(e->local_world_size, 2);
}

TEST(DistributedEnv, IncompleteLaunchesNameTheVariables) {
  auto no_addr = kTorchrun;
  no_addr.erase("MASTER_ADDR");
  EXPECT_NE(usage_error(no_addr).find("MASTER_ADDR not set"), std::string::npos) << usage_error(no_addr);
  EXPECT_NE(usage_error({{"WORLD_SIZE", "2"}}).find("RANK, MASTER_ADDR, MASTER_PORT not set"), std::string::npos)
      << usage_error({{"WORLD_SIZE", "2"}});
  auto bad = kTorchrun;
  bad["RANK"] = "8";
  EXPECT_NE(usage_error(bad).find("RANK=8 is outside 0..7"), std::string::npos) << usage_error(bad);
  bad = kTorchrun;
  bad["WORLD_SIZE"] = "eight";
  EXPECT_NE(usage_error(bad).find("WORLD_SIZE='eight' is not an integer"), std::string::npos) << usage_error(bad);
  bad = kTorchrun;
  bad["MASTER_PORT"] = "70000";
  EXPECT_NE(usage_error(bad).find("MASTER_PORT=70000"), std::string::npos) << usage_error(bad);
  bad = kTorchrun;
  bad["LOCAL_RANK"] = "2";
  EXPECT_NE(usage_error(bad).find("local rank 2 is outside 0..1"), std::string::npos) << usage_error(bad);
  EXPECT_NE(usage_error({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "2"}}).find("without SLURM_JOB_NODELIST"), std::string::npos);
  EXPECT_NE(usage_error({{"SLURM_PROCID", "2"}, {"SLURM_NTASKS", "2"}, {"SLURM_JOB_NODELIST", "n1"}}).find("SLURM_PROCID=2 is outside 0..1"),
            std::string::npos);
}

TEST(DistributedEnv, FirstHostOfASlurmNodeList) {
  EXPECT_EQ(first_slurm_host("node1"), "node1");
  EXPECT_EQ(first_slurm_host("node1,node2"), "node1");
  EXPECT_EQ(first_slurm_host("gpu[03-05,9],cpu1"), "gpu03");
  EXPECT_EQ(first_slurm_host("gpu[7,3-5]"), "gpu7");
  EXPECT_EQ(first_slurm_host("rack[1-2]-node[08-09]"), "rack1-node08");
  EXPECT_EQ(first_slurm_host("a-b.example.org"), "a-b.example.org");
  EXPECT_THROW(first_slurm_host(""), UsageError);
  EXPECT_THROW(first_slurm_host("gpu[1-2"), UsageError);
  EXPECT_THROW(first_slurm_host("gpu[]"), UsageError);
}

TEST(DistributedEnv, EachRankTrainsOnItsLocalDevice) {
  LaunchEnv e;
  e.local_rank = 3;
  e.local_world_size = 4;
  EXPECT_EQ(local_cuda_device(e, 8), c10::Device(c10::kCUDA, 3));
  EXPECT_EQ(local_cuda_device(e, 1), c10::Device(c10::kCUDA, 0));  // one visible device per task (Slurm --gpus-per-task)
  EXPECT_EQ(local_cuda_device(std::nullopt, 2), c10::Device(c10::kCUDA, 0));
  EXPECT_THROW(local_cuda_device(e, 2), UsageError);
  EXPECT_THROW(local_cuda_device(e, 0), UsageError);
}

}  // namespace
}  // namespace qtrain
