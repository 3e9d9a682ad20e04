// Where a model's weights come from when it is built: a checkpoint (checkpoint_weights.h) or a seeded
// generator (random_init.h). LlamaModel::from_weights asks a source for each tensor by its Hugging Face
// name, one at a time, so a 4-bit model never holds more than one full-precision linear.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "data/progress.h"
#include "ops/nf4.h"
#include "trainer/model/linear.h"

namespace qtrain {

struct LoadOptions {
  at::ScalarType dtype = at::kFloat;  // weights and compute
  at::Device device = at::kCPU;
  // Quantize every decoder-layer linear (q, k, v, o, gate, up, down) to 4 bits while loading, one
  // tensor at a time on `device`. Embeddings, norms and lm_head stay in `dtype` (as bitsandbytes does).
  // Checkpoints that are already bnb-4bit load their quantized weights as stored either way.
  std::optional<ops::QuantParams> quantize;
  ConsoleOptions console;  // a long load shows a progress line over the decoder layers
};

class WeightSource {
 public:
  virtual ~WeightSource() = default;
  // A weight that is not a decoder-layer linear (embedding, norms, lm_head): `name` with `shape`, in the
  // load dtype, on the load device.
  virtual at::Tensor get(const std::string& name, const std::vector<int64_t>& shape) const = 0;
  // The linear `prefix` ("model.layers.3.mlp.up_proj"): weight [out, in] (4-bit when the options say
  // so), and a bias [out] when `bias`.
  virtual Linear linear(const std::string& prefix, int64_t out, int64_t in, bool bias) const = 0;
};

}  // namespace qtrain
