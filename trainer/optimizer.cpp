#include "trainer/optimizer.h"

#include <map>

#include "data/error.h"
#include "ops/adamw.h"

namespace qtrain {
namespace {

// AdamW, bitsandbytes' update (ops/adamw.h), fp32 m and v per parameter.
class AdamW32 final : public Optimizer {
 public:
  AdamW32(const ops::AdamWParams& hp, NamedTensors params) : hp_(hp), params_(std::move(params)) {
    for (const auto& [name, p] : params_) states_.push_back(ops::make_adamw_state(p));
  }

  const NamedTensors& params() const override { return params_; }

  void step(int64_t update, double lr, double grad_scale) override {
    ops::AdamWParams hp = hp_;
    hp.lr = lr;
    for (std::size_t i = 0; i < params_.size(); ++i) {
      at::Tensor& p = params_[i].second;
      if (p.grad().defined()) ops::adamw_step(p, p.grad(), states_[i], update, hp, grad_scale);
    }
  }

  std::string kind() const override { return "adamw_32bit"; }

  NamedTensors state() const override {
    NamedTensors out;
    for (std::size_t i = 0; i < params_.size(); ++i) {
      out.emplace_back(params_[i].first + "/exp_avg", states_[i].exp_avg);
      out.emplace_back(params_[i].first + "/exp_avg_sq", states_[i].exp_avg_sq);
    }
    return out;
  }

  void load_state(const NamedTensors& state, const std::string& source) override {
    std::map<std::string, at::Tensor> by_name(state.begin(), state.end());
    if (by_name.size() != 2 * params_.size())
      throw InputError(source + ": optimizer state has " + std::to_string(by_name.size()) + " tensors, this model's " +
                       std::to_string(params_.size()) + " adapter tensors need " + std::to_string(2 * params_.size()));
    at::NoGradGuard ng;
    for (std::size_t i = 0; i < params_.size(); ++i) {
      const auto& [name, p] = params_[i];
      for (at::Tensor* dst : {&states_[i].exp_avg, &states_[i].exp_avg_sq}) {
        const std::string key = name + (dst == &states_[i].exp_avg ? "/exp_avg" : "/exp_avg_sq");
        auto it = by_name.find(key);
        if (it == by_name.end()) throw InputError(source + ": optimizer state has no tensor '" + key + "'");
        // copy_ would broadcast a wrongly shaped state silently: check first.
        if (it->second.sizes() != p.sizes() || it->second.scalar_type() != at::kFloat)
          throw InputError(source + ": optimizer tensor '" + key + "' is " + c10::toString(it->second.scalar_type()) +
                           c10::str(it->second.sizes()) + ", expected Float" + c10::str(p.sizes()));
        dst->copy_(it->second);
      }
    }
  }

  int64_t state_bytes() const override {
    int64_t n = 0;
    for (const auto& s : states_) n += s.exp_avg.nbytes() + s.exp_avg_sq.nbytes();
    return n;
  }

 private:
  ops::AdamWParams hp_;
  NamedTensors params_;
  std::vector<ops::AdamWState> states_;  // parallel to params_
};

}  // namespace

std::unique_ptr<Optimizer> make_optimizer(const OptimizerSection& c, double weight_decay, NamedTensors params) {
  // The recipe validator admits only what exists (adamw, 32 bits); this is the one place that maps it.
  if (c.name != "adamw" || c.bits != 32)
    throw UsageError("optimizer: " + c.name + " with " + std::to_string(c.bits) + "-bit state is not implemented");
  return std::make_unique<AdamW32>(ops::AdamWParams{0.0, c.beta1, c.beta2, c.eps, weight_decay}, std::move(params));
}

}  // namespace qtrain
