// The optimizer behind trainer/optimizer.h and its pager (trainer/paged_state.h), on the CPU, where the pager's
// "device" tier is a separate arena: the exact eviction / prefetch order for a small pool and for one slot; page
// contents survive any number of slots; the four AdamW variants (32/8-bit, resident/paged) give, for EVERY budget
// from all pages down to one, the bits of the unpaged optimizer; checkpoint state is the same whatever the paging
// and loads across paging choices; 8-bit state is named and shaped as bnb's (small params stay 32-bit); bad state
// is refused naming the tensor; the recipe's ecosystem names resolve to bits + paged.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <random>

#include "data/error.h"
#include "tests/scratch_dir.h"
#include "trainer/config.h"
#include "trainer/optimizer.h"
#include "trainer/paged_state.h"

namespace qtrain {
namespace {

using Ev = PagerEvent;

std::vector<Ev> visit_once(PagedState& ps) {
  ps.clear_trace();
  ps.visit([](const std::vector<PagedState::Resident>&) {});
  return ps.trace();
}

std::string show(const std::vector<Ev>& t) {
  std::string s;
  for (const Ev& e : t)
    s += (e.kind == Ev::kIn ? "in " : e.kind == Ev::kOut ? "out " : "run ") + std::to_string(e.page) + "/" +
         std::to_string(e.slot) + ", ";
  return s;
}

TEST(PagedState, EvictionAndPrefetchOrder) {
  PagedState ps(5, 64, at::kCPU, 2);
  ASSERT_TRUE(ps.paged());
  // Step 1, nothing resident: page 0 loaded, page 1 prefetched, then each next page into the slot used longest ago.
  const std::vector<Ev> step1 = {{Ev::kIn, 0, 0},  {Ev::kIn, 1, 1},  {Ev::kRun, 0, 1}, {Ev::kOut, 0, 0}, {Ev::kIn, 2, 0},
                                 {Ev::kRun, 1, 1}, {Ev::kOut, 1, 1}, {Ev::kIn, 3, 1},  {Ev::kRun, 2, 1}, {Ev::kOut, 2, 0},
                                 {Ev::kIn, 4, 0},  {Ev::kRun, 3, 1}, {Ev::kRun, 4, 1}};
  const auto t1 = visit_once(ps);
  EXPECT_EQ(t1, step1) << show(t1);
  // Step 2: the resident pages 3 and 4 as one batch first, then 0, 1, 2 through the pool.
  const std::vector<Ev> step2 = {{Ev::kRun, 3, 2}, {Ev::kOut, 3, 1}, {Ev::kIn, 0, 1},  {Ev::kOut, 4, 0}, {Ev::kIn, 1, 0},
                                 {Ev::kRun, 0, 1}, {Ev::kOut, 0, 1}, {Ev::kIn, 2, 1},  {Ev::kRun, 1, 1}, {Ev::kRun, 2, 1}};
  const auto t2 = visit_once(ps);
  EXPECT_EQ(t2, step2) << show(t2);
  // Every later step copies num_pages - slots pages each way.
  const int64_t in = ps.pages_in(), out = ps.pages_out();
  visit_once(ps);
  EXPECT_EQ(ps.pages_in() - in, 3);
  EXPECT_EQ(ps.pages_out() - out, 3);
}

TEST(PagedState, OneSlotLoadsUpdatesAndWritesBackInTurn) {
  PagedState ps(3, 64, at::kCPU, 1);
  visit_once(ps);
  const auto t = visit_once(ps);
  const std::vector<Ev> want = {{Ev::kRun, 2, 1}, {Ev::kOut, 2, 0}, {Ev::kIn, 0, 0}, {Ev::kRun, 0, 1},
                                {Ev::kOut, 0, 0}, {Ev::kIn, 1, 0},  {Ev::kRun, 1, 1}};
  EXPECT_EQ(t, want) << show(t);
}

TEST(PagedState, UnpagedIsOneBatchWithoutCopies) {
  PagedState ps(4, 64, at::kCPU, 9);
  EXPECT_FALSE(ps.paged());
  EXPECT_EQ(ps.host_bytes(), 0);
  const auto t = visit_once(ps);
  EXPECT_EQ(t, (std::vector<Ev>{{Ev::kRun, 0, 4}}));
  EXPECT_EQ(ps.pages_in(), 0);
}

TEST(PagedState, ContentsSurviveEveryPoolSize) {
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  const int64_t pages = 7, page_bytes = 40;
  at::Generator gen = at::detail::createCPUGenerator(seed);
  const at::Tensor init = at::randint(0, 256, {pages * page_bytes}, gen, at::kByte);
  for (int64_t slots = 1; slots <= pages + 1; ++slots) {
    PagedState ps(pages, page_bytes, at::kCPU, slots);
    ps.write_all(init);
    std::vector<int> seen(pages, 0);
    for (int step = 1; step <= 3; ++step) {
      ps.visit([&](const std::vector<PagedState::Resident>& batch) {
        for (const auto& r : batch) {
          ++seen[r.page];
          for (int64_t b = 0; b < page_bytes; ++b) r.data[b] = static_cast<uint8_t>(r.data[b] + 1 + r.page);
        }
      });
    }
    for (int64_t k = 0; k < pages; ++k) EXPECT_EQ(seen[k], 3) << "slots " << slots << " page " << k;
    const at::Tensor want = init + (3 * (1 + at::arange(pages, at::kInt).repeat_interleave(page_bytes))).to(at::kByte);
    EXPECT_TRUE(at::equal(ps.read_all(), want)) << "slots " << slots;
  }
}

// ---- the optimizer ----

struct Params {
  NamedTensors params;
};

// Adapter-like parameters of awkward sizes: below and above min_8bit_size (set to 1000 here), tail blocks.
NamedTensors make_params(at::ScalarType dtype, uint64_t seed) {
  at::Generator gen = at::detail::createCPUGenerator(seed);
  NamedTensors out;
  const std::vector<std::vector<int64_t>> shapes = {{8, 300}, {37}, {300, 8}, {4099}, {999}, {5, 1000}};
  for (std::size_t i = 0; i < shapes.size(); ++i) {
    at::Tensor p = (at::randn(shapes[i], gen) * 0.1).to(dtype);
    p.set_requires_grad(true);
    out.emplace_back("base_model.model.layer." + std::to_string(i) + ".weight", p);
  }
  return out;
}

NamedTensors clone_params(const NamedTensors& ps) {
  NamedTensors out;
  for (const auto& [n, p] : ps) {
    at::Tensor c = p.detach().clone();
    c.set_requires_grad(true);
    out.emplace_back(n, c);
  }
  return out;
}

OptimizerSection section(int64_t bits, bool paged, double budget_pages = 0, int64_t page_kb = 4) {
  OptimizerSection c;
  c.bits = bits;
  c.paged = paged;
  c.min_8bit_size = 1000;
  c.page_kb = page_kb;
  c.device_budget_mb = budget_pages * page_kb / 1024.0;
  return c;
}

// Runs `steps` optimizer steps with gradients drawn from `seed` (one param without a gradient at step 2).
void run_steps(Optimizer& opt, int first, int steps, uint64_t seed) {
  for (int t = first; t < first + steps; ++t) {
    at::Generator gen = at::detail::createCPUGenerator(seed + t);
    int i = 0;
    for (const auto& [n, p] : opt.params()) {
      at::Tensor g = (at::randn(p.sizes(), gen) * 1e-2).to(p.scalar_type());
      p.mutable_grad() = (t == 2 && i == 1) ? at::Tensor() : g;
      ++i;
    }
    opt.step(t, 1e-2 / t, t == 3 ? 0.5 : 1.0);
  }
}

void expect_same(const NamedTensors& a, const NamedTensors& b, const std::string& what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  for (std::size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].first, b[i].first) << what;
    EXPECT_TRUE(at::equal(a[i].second.detach().cpu().view(at::kByte), b[i].second.detach().cpu().view(at::kByte)))
        << what << ": " << a[i].first << " differs";
  }
}

TEST(Optimizer, PagedEqualsUnpagedForEveryBudget) {
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  for (const at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
    for (const int64_t bits : {32, 8}) {
      const std::string what = std::string(c10::toString(dtype)) + " " + std::to_string(bits) + "-bit";
      const NamedTensors init = make_params(dtype, seed);
      auto ref = make_optimizer(section(bits, false), 0.01, clone_params(init));
      run_steps(*ref, 1, 4, seed);
      // All pages resident (budget 0 = auto on CPU), then every pool size down to one page.
      auto probe = make_optimizer(section(bits, true), 0.01, clone_params(init));
      const int64_t pages = probe->pager()->num_pages();
      ASSERT_GE(pages, 8) << what << ": the test needs a state of many pages";
      for (int64_t slots = pages; slots >= 1; --slots) {
        auto opt = make_optimizer(section(bits, true, static_cast<double>(slots)), 0.01, clone_params(init));
        ASSERT_EQ(opt->pager()->slots(), slots);
        ASSERT_EQ(opt->pager()->paged(), slots < pages);
        run_steps(*opt, 1, 4, seed);
        expect_same(opt->params(), ref->params(), what + " params, " + std::to_string(slots) + " slots");
        expect_same(opt->state(), ref->state(), what + " state, " + std::to_string(slots) + " slots");
        if (slots < pages) EXPECT_EQ(opt->pager()->pages_in(), 4 * (pages - slots) + (slots < pages ? slots : 0));
        if (::testing::Test::HasFailure()) return;
      }
    }
  }
}

TEST(Optimizer, CheckpointStateLoadsAcrossPagingChoices) {
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  for (const int64_t bits : {32, 8}) {
    const NamedTensors init = make_params(at::kFloat, seed);
    auto straight = make_optimizer(section(bits, false), 0.0, clone_params(init));
    run_steps(*straight, 1, 5, seed);
    // 2 steps unpaged, save; restore into a paged optimizer with 2 slots (params copied as the trainer does).
    auto first = make_optimizer(section(bits, false), 0.0, clone_params(init));
    run_steps(*first, 1, 2, seed);
    const NamedTensors saved = first->state();
    auto second = make_optimizer(section(bits, true, 2), 0.0, clone_params(first->params()));
    second->load_state(saved, "test");
    expect_same(second->state(), saved, std::to_string(bits) + "-bit state after load");
    run_steps(*second, 3, 3, seed);
    expect_same(second->params(), straight->params(), std::to_string(bits) + "-bit resumed params");
    expect_same(second->state(), straight->state(), std::to_string(bits) + "-bit resumed state");
  }
}

TEST(Optimizer, EightBitStateIsNamedAndShapedAsBnb) {
  auto opt = make_optimizer(section(8, false), 0.0, make_params(at::kFloat, 1));
  EXPECT_EQ(opt->kind(), "adamw_8bit");
  std::map<std::string, at::Tensor> st;
  for (const auto& [n, t] : opt->state()) st[n] = t;
  const std::string big = "base_model.model.layer.3.weight", small = "base_model.model.layer.4.weight";
  ASSERT_TRUE(st.count(big + "/state1") && st.count(big + "/absmax2")) << "8-bit names for a 4099-element param";
  EXPECT_EQ(st[big + "/state1"].scalar_type(), at::kByte);
  EXPECT_EQ(st[big + "/state1"].numel(), 4099);
  EXPECT_EQ(st[big + "/absmax1"].numel(), 17);  // ceil(4099 / 256)
  ASSERT_TRUE(st.count(small + "/exp_avg")) << "a 999-element param (< min_8bit_size 1000) keeps 32-bit state";
  EXPECT_EQ(st[small + "/exp_avg"].scalar_type(), at::kFloat);
  // 8-bit state is a quarter of 32-bit state for the large params, plus the absmax.
  auto opt32 = make_optimizer(section(32, false), 0.0, make_params(at::kFloat, 1));
  EXPECT_EQ(opt32->kind(), "adamw_32bit");
  EXPECT_LT(opt->state_bytes(), opt32->state_bytes() / 2);
}

TEST(Optimizer, LoadStateRefusesWrongTensorsNamingThem) {
  auto opt = make_optimizer(section(8, false), 0.0, make_params(at::kFloat, 1));
  NamedTensors st = opt->state();
  auto err = [&](const NamedTensors& s) {
    try {
      opt->load_state(s, "ck/trainer_state.h5");
    } catch (const InputError& e) {
      return std::string(e.what());
    }
    return std::string("(no error)");
  };
  NamedTensors wrong = st;
  wrong[0].second = at::zeros({3}, at::kFloat);
  EXPECT_NE(err(wrong).find(wrong[0].first), std::string::npos) << err(wrong);
  NamedTensors renamed = st;
  renamed.back().first = "x/state9";
  EXPECT_NE(err(renamed).find("has no tensor"), std::string::npos) << err(renamed);
  // 32-bit state into an 8-bit optimizer: named, not a crash.
  auto opt32 = make_optimizer(section(32, false), 0.0, make_params(at::kFloat, 1));
  EXPECT_NE(err(opt32->state()).find("ck/trainer_state.h5"), std::string::npos);
}

TEST(Optimizer, BudgetBelowOnePageIsAUsageError) {
  EXPECT_THROW(make_optimizer(section(32, true, 0.5), 0.0, make_params(at::kFloat, 1)), UsageError);
}

// ---- recipe names ----

TEST(Optimizer, RecipeNamesResolveToBitsAndPaged) {
  test_tools::ScratchDir tmp("optnames");
  const auto file = tmp.path / "r.yaml";
  std::ofstream(file) << "model:\n  path: m\ndata:\n  files: [d.jsonl]\n";
  for (const auto& [name, bits, paged] : std::vector<std::tuple<std::string, int64_t, bool>>{
           {"adamw_32bit", 32, false}, {"adamw_8bit", 8, false}, {"paged_adamw_32bit", 32, true}, {"paged_adamw_8bit", 8, true}}) {
    const Recipe r = load_recipe(file, {"optimizer.name=" + name});
    EXPECT_EQ(r.optimizer.name, "adamw") << name;
    EXPECT_EQ(r.optimizer.bits, bits) << name;
    EXPECT_EQ(r.optimizer.paged, paged) << name;
  }
  const Recipe long_form = load_recipe(file, {"optimizer.bits=8", "optimizer.paged=true"});
  EXPECT_EQ(recipe_hash(long_form), recipe_hash(load_recipe(file, {"optimizer.name=paged_adamw_8bit"})));
  // Paging and its budget do not change the run's bits, so not its hash; 8 bits do.
  EXPECT_EQ(recipe_hash(load_recipe(file, {"optimizer.name=adamw_8bit"})), recipe_hash(long_form));
  EXPECT_NE(recipe_hash(load_recipe(file)), recipe_hash(long_form));
  auto error_of = [&](const std::vector<std::string>& sets) {
    try {
      load_recipe(file, sets);
    } catch (const UsageError& e) {
      return std::string(e.what());
    }
    return std::string("(no error)");
  };
  // The name wins over the long form, as the HF Trainer's optim string does.
  const Recipe named = load_recipe(file, {"optimizer.paged=true", "optimizer.name=adamw_8bit"});
  EXPECT_FALSE(named.optimizer.paged);
  EXPECT_EQ(named.optimizer.bits, 8);
  EXPECT_NE(error_of({"optimizer.name=sgd"}).find("paged_adamw_8bit"), std::string::npos);
  EXPECT_NE(error_of({"optimizer.bits=4"}).find("32 or 8"), std::string::npos);
}

}  // namespace
}  // namespace qtrain
