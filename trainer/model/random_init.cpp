#include "trainer/model/random_init.h"

#include <cmath>
#include <string>

namespace qtrain {

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

class RandomWeights final : public WeightSource {
 public:
  RandomWeights(const LoadOptions& opts, at::Generator gen) : opts_(opts), gen_(std::move(gen)) {}

  at::Tensor get(const std::string& name, const std::vector<int64_t>& shape) const override {
    const auto o = at::TensorOptions().dtype(opts_.dtype).device(opts_.device);
    if (ends_with(name, "norm.weight")) return at::ones(shape, o);
    const double std = name == "lm_head.weight" ? 2.0 / std::sqrt(static_cast<double>(shape.back())) : 1.0;
    return normal(shape, std);
  }

  Linear linear(const std::string& /*prefix*/, int64_t out, int64_t in, bool bias) const override {
    Linear l;
    const at::Tensor w = normal({out, in}, 1.0 / std::sqrt(static_cast<double>(in)));  // [out, in]
    if (opts_.quantize) l.qweight = ops::quantize_4bit(w, *opts_.quantize);
    else l.weight = w;
    if (bias) l.bias = at::zeros({out}, at::TensorOptions().dtype(opts_.dtype).device(opts_.device));
    return l;
  }

 private:
  // Drawn in float32 whatever the load dtype, so one seed gives the same values (up to the final
  // rounding) in every dtype.
  at::Tensor normal(const std::vector<int64_t>& shape, double std) const {
    const auto o = at::TensorOptions().dtype(at::kFloat).device(opts_.device);
    return at::normal(0.0, std, shape, gen_, o).to(opts_.dtype);
  }

  const LoadOptions& opts_;
  at::Generator gen_;
};

}  // namespace

std::unique_ptr<WeightSource> random_weights(const LoadOptions& opts, at::Generator gen) {
  return std::make_unique<RandomWeights>(opts, std::move(gen));
}

}  // namespace qtrain
