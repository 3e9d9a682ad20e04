#include "trainer/model/rope.h"

#include <cmath>

#include "ops/rotary.h"

namespace qtrain {

at::Tensor rope_inv_freq(const RopeConfig& rope, int64_t head_dim) {
  // 1 / theta^(2i / d), exponent formed in float32 exactly as transformers does.
  auto exponent = at::arange(0, head_dim, 2, at::kLong).to(at::kFloat) / static_cast<double>(head_dim);
  at::Tensor inv_freq = 1.0 / at::pow(at::scalar_tensor(rope.theta, at::kFloat), exponent);
  switch (rope.type) {
    case RopeType::kDefault:
      return inv_freq;
    case RopeType::kLinear:
      return inv_freq / rope.factor;
    case RopeType::kLlama3: {
      // Llama 3.1: long wavelengths are slowed by `factor`, short ones kept, the band between
      // interpolated smoothly (transformers' _compute_llama3_parameters).
      const double old_ctx = static_cast<double>(rope.original_max_position_embeddings);
      const double low_wavelen = old_ctx / rope.low_freq_factor;
      const double high_wavelen = old_ctx / rope.high_freq_factor;
      at::Tensor wavelen = 2 * M_PI / inv_freq;
      at::Tensor scaled = at::where(wavelen > low_wavelen, inv_freq / rope.factor, inv_freq);
      at::Tensor smooth = (old_ctx / wavelen - rope.low_freq_factor) / (rope.high_freq_factor - rope.low_freq_factor);
      at::Tensor smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled;
      at::Tensor medium = at::logical_not(wavelen < high_wavelen).logical_and(at::logical_not(wavelen > low_wavelen));
      return at::where(medium, smoothed, scaled);
    }
  }
  throw std::logic_error("rope_inv_freq: unhandled rope type");
}

RopeTables rope_tables(const at::Tensor& inv_freq, const at::Tensor& positions, at::ScalarType dtype) {
  // freqs [batch, seq, head_dim/2] = positions ⊗ inv_freq, as a float32 matmul like transformers.
  at::Tensor inv = inv_freq.to(positions.device(), at::kFloat);
  at::Tensor freqs = at::matmul(inv.view({1, -1, 1}).expand({positions.size(0), -1, 1}),
                                positions.to(at::kFloat).unsqueeze(1))
                         .transpose(1, 2);
  at::Tensor emb = at::cat({freqs, freqs}, -1);  // [batch, seq, head_dim]
  return {emb.cos().to(dtype), emb.sin().to(dtype)};
}

at::Tensor apply_rope(const at::Tensor& x, const RopeTables& t) { return ops::rotary(x, t.cos, t.sin); }

}  // namespace qtrain
