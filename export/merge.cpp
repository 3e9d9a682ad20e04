#include "export/merge.h"

namespace qtrain {

at::Tensor merged_weight(const Linear& l, MergeLayerStat* stat) {
  at::NoGradGuard ng;
  at::Tensor w = l.dense_weight(at::kFloat);  // [out, in]: deq(NF4) in float32, or the dense base widened
  if (stat) stat->weight_norm = w.norm().item<double>();
  if (!l.lora) return w;
  // s·B·A with B [out, r], A [r, in], in float32 whatever the adapter's master dtype (PEFT's
  // get_delta_weight computes in the adapter dtype; float32 is at least as exact).
  at::Tensor delta = at::matmul(l.lora->B.detach().to(w.device(), at::kFloat), l.lora->A.detach().to(w.device(), at::kFloat)) *
                     l.lora->scale;
  if (stat) stat->delta_norm = delta.norm().item<double>();
  return w.add_(delta);
}

namespace {
MergeLayerStat merge_into(const std::string& name, Linear& l, at::ScalarType dtype, const MergedWeightSink& sink) {
  MergeLayerStat stat{name};
  const at::Tensor w32 = merged_weight(l, &stat);
  if (sink) sink(name, w32);
  l.weight = w32.to(dtype);
  l.qweight.reset();
  l.lora.reset();
  return stat;
}
}  // namespace

MergeLayerStat merge_linear(const std::string& name, Linear& l, at::ScalarType dtype) { return merge_into(name, l, dtype, {}); }

std::vector<MergeLayerStat> merge_adapters(LlamaModel& model, const MergedWeightSink& sink) {
  std::vector<MergeLayerStat> stats;
  model.for_each_linear([&](const std::string& name, Linear& l) {
    const bool adapted = static_cast<bool>(l.lora);
    MergeLayerStat s = merge_into(name, l, model.dtype(), sink);
    if (adapted) stats.push_back(s);
  });
  return stats;
}

}  // namespace qtrain
