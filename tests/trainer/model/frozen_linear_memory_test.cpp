// Defect 1 of issue 8: a 4-bit linear that carries no adapter (target_modules narrower than
// all-linear) must not keep its dequantized full-precision W alive until backward, in Linear::forward
// and through a whole model. Counted with the counting CPU allocator (tests/ops/counting_allocator.h);
// the negative control is what Linear::forward did before: at::linear through the dequantized W.
#include <gtest/gtest.h>

#include <ATen/CPUGeneratorImpl.h>

#include <cstdio>

#include "tests/ops/counting_allocator.h"
#include "trainer/model/model.h"

namespace qtrain {
namespace {

using test::AllocatorScope;

TEST(FrozenLinearMemory, QuantizedLinearWithoutAdapterKeepsNoDenseWeight) {
  constexpr int64_t N = 1024, K = 1024, T = 8;
  constexpr int64_t kWBytes = N * K * 4;  // fp32 W: 4 MiB
  Linear l;
  l.qweight = ops::quantize_4bit(at::randn({N, K}), ops::QuantParams{});
  l.bias = at::randn({N});
  // x requires grad, as it does after any layer that carries an adapter.
  at::Tensor x = at::randn({2, T / 2, K}).set_requires_grad(true);

  AllocatorScope scope;
  int64_t before = scope.live();
  at::Tensor y = l.forward(x);
  const int64_t kept = scope.live() - before;
  y.sum().backward();
  const at::Tensor gx = x.grad().clone();
  x.mutable_grad() = at::Tensor();

  before = scope.live();
  at::Tensor yc = at::linear(x, l.dense_weight(at::kFloat), l.bias);  // the pre-fix path
  const int64_t kept_control = scope.live() - before;
  yc.sum().backward();

  std::printf("Linear::forward keeps %lld bytes; dense control %lld; fp32 W %lld\n", static_cast<long long>(kept),
              static_cast<long long>(kept_control), static_cast<long long>(kWBytes));
  EXPECT_LT(kept, kWBytes / 4) << "Linear::forward on a frozen 4-bit W keeps " << kept << " bytes; W alone is " << kWBytes;
  EXPECT_GE(kept_control, kWBytes) << "the control should hold a full-precision W (" << kept_control << " bytes kept)";
  EXPECT_TRUE(at::allclose(y, yc, 1e-4, 1e-4)) << "same output as the dense control";
  EXPECT_TRUE(at::allclose(gx, x.grad(), 1e-4, 1e-4)) << "same grad x as the dense control";
}

// Through the model: NF4 base, an adapter on q_proj only, so six of seven linears per layer are frozen
// 4-bit linears inside a graph that needs grad x. While the graph is alive, much less than the frozen
// linears' fp32 size may be held (activations for 8 tokens are small next to them).
TEST(FrozenLinearMemory, ModelWithNarrowTargetsKeepsNoDenseWeights) {
  ModelConfig c;
  c.vocab_size = 64;
  c.hidden_size = 256;
  c.intermediate_size = 768;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 4;
  c.head_dim = 64;
  LoadOptions lo;
  lo.quantize = ops::QuantParams{};
  LlamaModel m = LlamaModel::random(c, lo, at::make_generator<at::CPUGeneratorImpl>(3));
  LoraSpec spec;
  spec.targets = {"q_proj"};
  m.add_lora(spec, at::make_generator<at::CPUGeneratorImpl>(4));
  int64_t frozen_bytes = 0;
  m.for_each_linear([&](const std::string&, const Linear& l) {
    if (!l.lora) frozen_bytes += l.shape()[0] * l.shape()[1] * 4;
  });
  const at::Tensor ids = at::randint(0, c.vocab_size, {1, 8}, at::kLong);
  const at::Tensor seg = at::zeros({1, 8}, at::kInt), pos = at::arange(8, at::kLong).view({1, 8});

  AllocatorScope scope;
  const int64_t before = scope.live();
  at::Tensor h = m.hidden_states(ids, seg, pos);
  const int64_t kept = scope.live() - before;
  h.sum().backward();
  std::printf("model forward keeps %lld bytes; frozen linears in fp32: %lld\n", static_cast<long long>(kept),
              static_cast<long long>(frozen_bytes));
  EXPECT_LT(kept, frozen_bytes / 4) << "the forward keeps " << kept << " bytes; the frozen linears in fp32 are "
                                    << frozen_bytes;
  for (const auto& [name, p] : m.lora_parameters()) EXPECT_TRUE(p.grad().defined()) << name;
}

}  // namespace
}  // namespace qtrain
