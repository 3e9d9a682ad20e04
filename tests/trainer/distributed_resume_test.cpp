// What a data-parallel checkpoint carries and how another world size continues from it, without
// processes: the ranks file (world size + every rank's dropout stream) round-trips through the
// checkpointer, a malformed one is refused naming the file, a one-process checkpoint reads as world 1,
// and the cursor re-sharding arithmetic on one process (W ranks × p batches = p·W global micro-batches
// done; an epoch fully done moves to the next one). Multi-process behaviour: tests/oracle/test_distributed.py.
#include <gtest/gtest.h>

#include <random>

#include <ATen/CPUGeneratorImpl.h>

#include "data/error.h"
#include "data/io/safetensors.h"
#include "tests/scratch_dir.h"
#include "trainer/checkpointer.h"
#include "trainer/distributed.h"

namespace qtrain {
namespace {
namespace fs = std::filesystem;
using test_tools::ScratchDir;

NamedTensors tiny_adapter() {
  const std::string m = "base_model.model.model.layers.0.self_attn.q_proj.";
  return {{m + "lora_A.weight", at::full({2, 8}, 0.5f)}, {m + "lora_B.weight", at::zeros({8, 2})}};
}

AdapterInfo tiny_info() {
  AdapterInfo info;
  info.r = 2;
  info.alpha = 4;
  info.target_modules = {"q_proj"};
  return info;
}

TrainerState state_at(int64_t step, const at::Tensor& rng) {
  TrainerState s;
  s.step = step;
  s.recipe_hash = "h";
  s.optimizer = "adamw_32bit";
  s.rng_state = rng;
  s.optimizer_state = {{"x/exp_avg", at::full({3}, 1.0f)}};
  return s;
}

TEST(DistributedResume, RankStatesRoundTripThroughTheCheckpointer) {
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  at::Generator g = at::make_generator<at::CPUGeneratorImpl>(seed);
  ScratchDir tmp("dp-ckpt");
  Checkpointer ck(tmp.path, 0, "h");
  RankStates ranks;
  ranks.world_size = 3;
  for (int r = 0; r < 3; ++r) ranks.rng.push_back(at::randint(0, 256, {5056}, g, at::kByte));
  const fs::path dir = ck.save(state_at(4, ranks.rng[0]), tiny_adapter(), tiny_info(), ranks);
  const RankStates back = Checkpointer::load_ranks(dir);
  EXPECT_EQ(back.world_size, 3);
  ASSERT_EQ(back.rng.size(), 3u);
  for (int r = 0; r < 3; ++r) EXPECT_TRUE(at::equal(back.rng[r], ranks.rng[r])) << "rank " << r;
  // One process writes no ranks file and reads back as world 1.
  const fs::path one = ck.save(state_at(5, ranks.rng[0]), tiny_adapter(), tiny_info());
  EXPECT_FALSE(fs::exists(one / "ranks.safetensors"));
  EXPECT_EQ(Checkpointer::load_ranks(one).world_size, 1);
  EXPECT_TRUE(Checkpointer::load_ranks(one).rng.empty());
}

std::string input_error(const fs::path& ck) {
  try {
    Checkpointer::load_ranks(ck);
  } catch (const InputError& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(DistributedResume, AMalformedRanksFileIsRefusedByName) {
  ScratchDir tmp("dp-bad");
  const fs::path file = tmp.path / "ranks.safetensors";
  safetensors::save(file, {{"rng.0", at::zeros({16}, at::kByte)}}, {{"format", "pt"}});
  EXPECT_NE(input_error(tmp.path).find(file.string() + ": metadata world_size is missing"), std::string::npos) << input_error(tmp.path);
  safetensors::save(file, {{"rng.0", at::zeros({16}, at::kByte)}}, {{"world_size", "two"}});
  EXPECT_NE(input_error(tmp.path).find("not a positive integer"), std::string::npos) << input_error(tmp.path);
  safetensors::save(file, {{"rng.0", at::zeros({16}, at::kByte)}}, {{"world_size", "2"}});
  EXPECT_NE(input_error(tmp.path).find("tensor 'rng.1' is missing (world_size 2)"), std::string::npos) << input_error(tmp.path);
}

// 10 examples, micro-batches of 2 rows: 5 global micro-batches per epoch.
std::shared_ptr<ExampleSet> ten_examples() {
  auto s = std::make_shared<ExampleSet>();
  for (int i = 0; i < 10; ++i) {
    const std::vector<int32_t> ids = {1, 2 + i, 3};
    const std::vector<uint8_t> mask = {0, 1, 1};
    s->add(ids, mask);
  }
  return s;
}

TEST(DistributedResume, OneProcessContinuesWhereTwoRanksStopped) {
  ScratchDir tmp("dp-cursor");
  safetensors::save(tmp.path / "ranks.safetensors", {{"rng.0", at::zeros({16}, at::kByte)}, {"rng.1", at::ones({16}, at::kByte)}},
                    {{"world_size", "2"}});
  DataConfig config;
  config.max_seq_len = 16;
  DataParallel one;  // no launcher: one process
  // Two ranks at position 2 each: global micro-batches 0..3 are done; one process goes on at 4.
  Cursor c = one.resumed_cursor(tmp.path, Cursor{1, 2, config.seed}, ten_examples(), 2, config);
  EXPECT_EQ(c.epoch, 1);
  EXPECT_EQ(c.position, 4);
  EXPECT_NE(one.describe().find("resumed on 1 rank from a checkpoint of 2: data cursor re-sharded (4 of 5 global micro-batches of epoch 1 done)"),
            std::string::npos)
      << one.describe();
  EXPECT_EQ(one.describe().find("skipped"), std::string::npos) << one.describe();
  // Position 3 each on 2 ranks = 6 slots ≥ 5 micro-batches (rank 1's third was filler): the epoch is done.
  c = one.resumed_cursor(tmp.path, Cursor{1, 3, config.seed}, ten_examples(), 2, config);
  EXPECT_EQ(c.epoch, 2);
  EXPECT_EQ(c.position, 0);
  // Rank 0 keeps its own stream; the same world size needs no re-sharding.
  const at::Tensor mine = at::full({16}, 7, at::kByte);
  EXPECT_TRUE(at::equal(one.resumed_rng(tmp.path, mine), mine));
  fs::remove(tmp.path / "ranks.safetensors");
  c = one.resumed_cursor(tmp.path, Cursor{1, 3, config.seed}, ten_examples(), 2, config);
  EXPECT_EQ(c.position, 3);
}

TEST(DistributedResume, OneProcessHooksAreTheIdentity) {
  DataParallel one;
  EXPECT_TRUE(one.single());
  EXPECT_TRUE(one.is_main());
  const StepReduce r = one.step_reduce();
  EXPECT_FALSE(r.counts);
  EXPECT_FALSE(r.grads);
  EXPECT_TRUE(one.agree_stop(true, 15));
  EXPECT_FALSE(one.agree_stop(false));
  EXPECT_EQ(one.dropout_seed(42), 42u);
  bool ran = false;
  one.main_first("x", [&] { ran = true; });
  EXPECT_TRUE(ran);
  int polled = 0;
  EXPECT_TRUE(one.within_step([&] { return ++polled > 0; })());
}

}  // namespace
}  // namespace qtrain
