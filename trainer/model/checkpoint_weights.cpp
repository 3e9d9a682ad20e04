#include "trainer/model/checkpoint_weights.h"

#include <string>

#include "data/error.h"
#include "data/io/awq_format.h"
#include "data/io/bnb_format.h"
#include "data/io/gptq_format.h"
#include "data/io/hf_config.h"

namespace qtrain {
namespace fs = std::filesystem;

namespace {

class CheckpointWeights final : public WeightSource {
 public:
  CheckpointWeights(const safetensors::Checkpoint& ckpt, const LoadOptions& opts, std::optional<GptqSettings> gptq,
                    std::optional<AwqSettings> awq)
      : ckpt_(ckpt), opts_(opts), gptq_(gptq), awq_(awq) {}

  at::Tensor get(const std::string& name, const std::vector<int64_t>& shape) const override {
    check(name, shape);
    // Same dtype on CPU: `to` returns the mmapped view itself, so no copy is made.
    return ckpt_.tensor(name).to(opts_.device, opts_.dtype);
  }

  Linear linear(const std::string& prefix, int64_t out, int64_t in, bool bias) const override {
    Linear l;
    const std::string w = prefix + ".weight";
    if (bnb::is_quantized(ckpt_, w)) {
      l.qweight = bnb::load(ckpt_, w, opts_.device);
      if (l.qweight->shape != std::vector<int64_t>{out, in})
        throw InputError(ckpt_.dir().string() + ": 4-bit tensor '" + w + "' has shape " + c10::str(at::IntArrayRef(l.qweight->shape)) +
                         " but config.json implies " + c10::str(at::IntArrayRef({out, in})));
    } else if (is_gptq_linear(ckpt_, prefix)) {
      // GPTQ v1 or AWQ GEMM (both store P.qweight; config.json says which): dequantized in fp32 on the
      // load device, then dense in the load dtype or NF4 when asked.
      load_packed(l, packed_linear(prefix, out, in));
    } else if (opts_.quantize) {
      check(w, {out, in});
      l.qweight = quantize(w);
    } else {
      l.weight = get(w, {out, in});
    }
    if (bias) l.bias = get(prefix + ".bias", {out});
    return l;
  }

 private:
  // Throws unless the checkpoint holds `name` with exactly `shape`.
  void check(const std::string& name, const std::vector<int64_t>& shape) const {
    if (!ckpt_.contains(name))
      throw InputError(ckpt_.dir().string() + ": checkpoint is missing tensor '" + name + "' (expected shape " +
                       c10::str(at::IntArrayRef(shape)) + ")");
    const auto& info = ckpt_.info(name);
    if (info.shape != shape)
      throw InputError(ckpt_.dir().string() + ": tensor '" + name + "' has shape " + c10::str(at::IntArrayRef(info.shape)) +
                       " but config.json implies " + c10::str(at::IntArrayRef(shape)));
  }

  // The integer form of a packed linear, by the checkpoint's quantization_config: the settings given,
  // else the checkpoint's own config.json (read once).
  GptqLinear packed_linear(const std::string& prefix, int64_t out, int64_t in) const {
    if (!gptq_ && !awq_) {
      const ModelConfig c = parse_model_config(ckpt_.dir() / "config.json");
      gptq_ = c.gptq;
      awq_ = c.awq;
    }
    if (awq_) return unpack_awq_gemm(ckpt_, prefix, out, in, awq_->bits, awq_->group_size);
    if (gptq_) return unpack_gptq_v1(ckpt_, prefix, out, in, gptq_->bits, gptq_->group_size);
    throw InputError(ckpt_.dir().string() + ": tensor '" + prefix + ".qweight' is a packed weight but config.json " +
                     "has no quantization_config with quant_method \"gptq\" or \"awq\" (its bits and group_size are needed)");
  }

  // Dequantizes `q` on the load device into `l`: dense in the load dtype, or NF4 when asked.
  void load_packed(Linear& l, GptqLinear q) const {
    q.codes = q.codes.to(opts_.device);
    q.scales = q.scales.to(opts_.device);
    q.zeros = q.zeros.to(opts_.device);
    q.g_idx = q.g_idx.to(opts_.device);
    if (opts_.quantize) l.qweight = ops::quantize_4bit(q.dequantize(at::kFloat), *opts_.quantize);
    else l.weight = q.dequantize(opts_.dtype);
  }

  // One full-precision tensor at a time: read from the mmap, quantized on the target device.
  ops::QuantState quantize(const std::string& name) const {
    const at::Tensor w = ckpt_.tensor(name);  // [out, in], CPU view of the mapping
    try {
      return ops::quantize_4bit(w.to(opts_.device), *opts_.quantize);
    } catch (const c10::Error&) {
      // The quantizer refuses a non-finite weight but knows only a block index; the user needs the
      // tensor, the file and the element. Any other failure is rethrown as it was.
      const at::Tensor bad = at::logical_not(at::isfinite(w)).reshape({-1});
      if (!bad.any().item<bool>()) throw;
      const int64_t i = bad.nonzero()[0][0].item<int64_t>();
      const int64_t cols = w.size(1);
      throw InputError(ckpt_.file_of(name).string() + ": tensor '" + name + "' holds a non-finite value (" +
                       c10::str(w.reshape({-1})[i].item<double>()) + ") at [" + std::to_string(i / cols) + ", " +
                       std::to_string(i % cols) + "]; a base weight must be finite to be quantized to 4 bits");
    }
  }

  const safetensors::Checkpoint& ckpt_;
  const LoadOptions& opts_;
  mutable std::optional<GptqSettings> gptq_;
  mutable std::optional<AwqSettings> awq_;
};

}  // namespace

std::unique_ptr<WeightSource> checkpoint_weights(const safetensors::Checkpoint& ckpt, const LoadOptions& opts,
                                                 std::optional<GptqSettings> gptq, std::optional<AwqSettings> awq) {
  return std::make_unique<CheckpointWeights>(ckpt, opts, gptq, awq);
}

}  // namespace qtrain
