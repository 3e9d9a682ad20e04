#include "data/io/gptq_format.h"

#include <string>
#include <vector>

#include "data/error.h"

namespace qtrain {
namespace fs = std::filesystem;

namespace {

// Shifts 0, bits, 2·bits, ... for the `per_word` values of one int32 word, as an int64 tensor.
at::Tensor word_shifts(int bits, int64_t per_word) {
  return at::arange(per_word, at::TensorOptions().dtype(at::kLong)) * bits;
}

// Packs v [rows, cols] (integers in [0, 2^bits)) along dim `dim` into int32 words, value j of a word in
// bits j·bits.. (low bits first). The sum of disjoint shifted fields is the bitwise or; computed in
// int64 and wrapped to int32 (two's complement), as numpy's uint32 → int32 view in the references.
at::Tensor pack_along(const at::Tensor& v, int64_t dim, int bits) {
  const int64_t pf = 32 / bits;
  at::Tensor x = v.to(at::kLong);
  if (dim == 1) x = x.t();  // pack along rows from here on
  const int64_t rows = x.size(0), cols = x.size(1);
  at::Tensor words = at::bitwise_left_shift(x.reshape({rows / pf, pf, cols}), word_shifts(bits, pf).view({1, pf, 1})).sum(1);
  at::Tensor out = words.to(at::kInt);  // [rows/pf, cols]; C++20 conversion is modular
  return dim == 1 ? out.t().contiguous() : out.contiguous();
}

// The inverse: words int32 [rows/pf, cols] (dim 0) or [rows, cols/pf] (dim 1) → int64 values.
at::Tensor unpack_along(const at::Tensor& words, int64_t dim, int bits) {
  const int64_t pf = 32 / bits;
  at::Tensor w = words.to(at::kLong) & 0xFFFFFFFFLL;  // the unsigned word
  if (dim == 1) w = w.t();
  const int64_t r = w.size(0), c = w.size(1);
  at::Tensor v = at::bitwise_right_shift(w.unsqueeze(1), word_shifts(bits, pf).view({1, pf, 1})) & ((1LL << bits) - 1);  // [r, pf, c]
  v = v.reshape({r * pf, c});
  return dim == 1 ? v.t().contiguous() : v;
}

void check_bits(int bits, const std::string& what) {
  if (bits != 4 && bits != 8)
    throw UsageError(what + ": GPTQ bits must be 4 or 8 (the int32 packing holds 8 or 4 values a word), found " +
                     std::to_string(bits));
}

}  // namespace

at::Tensor GptqLinear::dequantize(at::ScalarType dtype) const {
  const at::Tensor gi = g_idx.to(at::kLong);
  const at::Tensor s = scales.to(at::kFloat).index_select(0, gi).t();  // [out, in]
  const at::Tensor z = zeros.to(at::kFloat).index_select(0, gi).t();   // [out, in]
  return ((codes.to(at::kFloat) - z) * s).to(dtype);
}

std::map<std::string, at::Tensor> pack_gptq_v1(const std::string& prefix, const GptqLinear& q) {
  check_bits(q.bits, prefix);
  const int64_t pf = 32 / q.bits;
  const int64_t out = q.out(), in = q.in();
  if (out % pf != 0)
    throw UsageError(prefix + ": GPTQ v1 packs qzeros along the output dimension " + std::to_string(pf) +
                     " to a word, so out_features must be a multiple of " + std::to_string(pf) + ", found " +
                     std::to_string(out));
  if (in % pf != 0)
    throw UsageError(prefix + ": GPTQ v1 packs qweight along the input dimension " + std::to_string(pf) +
                     " to a word, so in_features must be a multiple of " + std::to_string(pf) + ", found " +
                     std::to_string(in));
  const int64_t groups = q.scales.size(0);
  if (q.scales.sizes() != at::IntArrayRef{groups, out} || q.zeros.sizes() != at::IntArrayRef{groups, out} ||
      q.g_idx.sizes() != at::IntArrayRef{in})
    throw UsageError(prefix + ": inconsistent GptqLinear (codes " + c10::str(q.codes.sizes()) + ", scales " +
                     c10::str(q.scales.sizes()) + ", zeros " + c10::str(q.zeros.sizes()) + ", g_idx " +
                     c10::str(q.g_idx.sizes()) + ")");
  const at::Tensor codes = q.codes.cpu().to(at::kLong);
  const at::Tensor zeros = q.zeros.cpu().to(at::kLong);
  const int64_t maxq = (1LL << q.bits) - 1;
  if (codes.min().item<int64_t>() < 0 || codes.max().item<int64_t>() > maxq)
    throw UsageError(prefix + ": codes outside [0, " + std::to_string(maxq) + "]");
  // v1 stores zero-1 per field; a zero of 0 would be -1, which no v1 reader decodes back (formats.md §5.6).
  // Our quantizers never produce it (gptq.h); a zero above maxq+1 cannot be stored either.
  const int64_t bad = at::logical_or(zeros < 1, zeros > maxq + 1).sum().item<int64_t>();
  if (bad != 0)
    throw UsageError(prefix + ": " + std::to_string(bad) + " zero point(s) outside [1, " + std::to_string(maxq + 1) +
                     "]; GPTQ v1 stores zero-1 in " + std::to_string(q.bits) + " bits (a zero of 0 is the known v1 limitation)");
  const at::Tensor g = q.g_idx.cpu().to(at::kLong);
  if (in > 0 && (g.min().item<int64_t>() < 0 || g.max().item<int64_t>() >= groups))
    throw UsageError(prefix + ": g_idx outside [0, " + std::to_string(groups) + ")");

  std::map<std::string, at::Tensor> t;
  t[prefix + ".qweight"] = pack_along(codes.t(), 0, q.bits);          // [in/pf, out]
  t[prefix + ".qzeros"] = pack_along(zeros - 1, 1, q.bits);           // [groups, out/pf]
  t[prefix + ".scales"] = q.scales.cpu().to(at::kHalf).contiguous();  // [groups, out]
  // fp16 holds scales in [6e-8, 65504]: a group of weights below ~5e-7 or above ~1e6 would be stored as a
  // zero or infinite scale, a checkpoint no reader (ours included) accepts.
  const at::Tensor& s16 = t[prefix + ".scales"];
  if (!at::isfinite(s16).all().item<bool>() || (s16 == 0).any().item<bool>())
    throw UsageError(prefix + ".scales: a group's scale is out of float16's range (weights of magnitude below ~5e-7 "
                     "or above ~1e6); this layer cannot be stored as GPTQ");
  t[prefix + ".g_idx"] = g.to(at::kInt).contiguous();                 // [in]
  return t;
}

GptqLinear unpack_gptq_v1(const TensorGetter& get, const std::string& source, const std::string& prefix, int64_t out,
                          int64_t in, int bits, int64_t group_size) {
  check_bits(bits, source + ": '" + prefix + "'");
  const int64_t pf = 32 / bits;
  const int64_t groups = gptq_num_groups(in, group_size);
  auto fail = [&](const std::string& name, const std::string& msg) -> void {
    throw InputError(source + ": GPTQ tensor '" + name + "' " + msg);
  };
  if (out % pf != 0 || in % pf != 0)
    fail(prefix + ".qweight", "cannot hold a " + std::to_string(out) + "x" + std::to_string(in) + " linear in " +
                                  std::to_string(bits) + "-bit GPTQ v1 (both dimensions must be multiples of " +
                                  std::to_string(pf) + ")");
  auto fetch = [&](const std::string& suffix, std::vector<int64_t> shape, bool integer, bool required) {
    const std::string name = prefix + suffix;
    at::Tensor t = get(name);
    if (!t.defined()) {
      if (required) fail(name, "is missing (expected shape " + c10::str(at::IntArrayRef(shape)) + ")");
      return t;
    }
    if (integer ? t.scalar_type() != at::kInt : !at::isFloatingType(t.scalar_type()))
      fail(name, std::string("has dtype ") + c10::toString(t.scalar_type()) + ", expected " +
                     (integer ? "int32" : "a float type (fp16)"));
    if (t.sizes() != at::IntArrayRef(shape))
      fail(name, "has shape " + c10::str(t.sizes()) + ", expected " + c10::str(at::IntArrayRef(shape)) + " for a " +
                     std::to_string(out) + "x" + std::to_string(in) + " linear with bits " + std::to_string(bits) +
                     ", group_size " + std::to_string(group_size));
    return t;
  };
  const at::Tensor qweight = fetch(".qweight", {in / pf, out}, true, true);
  const at::Tensor qzeros = fetch(".qzeros", {groups, out / pf}, true, true);
  const at::Tensor scales = fetch(".scales", {groups, out}, false, true);
  // Old AutoGPTQ checkpoints without act-order may omit g_idx: then it is k / group_size.
  at::Tensor g_idx = fetch(".g_idx", {in}, true, false);

  GptqLinear q;
  q.bits = bits;
  q.codes = unpack_along(qweight.cpu(), 0, bits).t().to(at::kByte).contiguous();     // [out, in]
  q.zeros = (unpack_along(qzeros.cpu(), 1, bits) + 1).to(at::kInt).contiguous();   // [groups, out]
  q.scales = scales.cpu().to(at::kFloat).contiguous();
  if (!at::isfinite(q.scales).all().item<bool>()) fail(prefix + ".scales", "holds a non-finite value");
  if (g_idx.defined()) {
    q.g_idx = g_idx.cpu().contiguous();
    if (in > 0) {
      const int64_t lo = q.g_idx.min().item<int64_t>(), hi = q.g_idx.max().item<int64_t>();
      if (lo < 0 || hi >= groups)
        fail(prefix + ".g_idx", "holds group " + std::to_string(lo < 0 ? lo : hi) + ", outside [0, " +
                                    std::to_string(groups) + ")");
    }
  } else {
    q.g_idx = (at::floor_divide(at::arange(in, at::kLong), gptq_group_width(in, group_size))).to(at::kInt);
  }
  return q;
}

GptqLinear unpack_gptq_v1(const safetensors::Checkpoint& ckpt, const std::string& prefix, int64_t out, int64_t in,
                          int bits, int64_t group_size) {
  // Name the file that holds the linear (its qweight) in errors; the directory if it is absent.
  const std::string source = ckpt.file_of(prefix + ".qweight").string();
  const TensorGetter get = [&](const std::string& name) {
    return ckpt.contains(name) ? ckpt.tensor(name) : at::Tensor();
  };
  return unpack_gptq_v1(get, source, prefix, out, in, bits, group_size);
}

bool is_gptq_linear(const safetensors::Checkpoint& ckpt, const std::string& prefix) {
  return ckpt.contains(prefix + ".qweight");
}

nlohmann::ordered_json gptq_quantization_config(const GptqSettings& s) {
  check_bits(s.bits, "quantization_config");
  nlohmann::ordered_json j;
  j["bits"] = s.bits;
  j["group_size"] = s.group_size;
  j["damp_percent"] = s.damp_percent;
  j["desc_act"] = s.desc_act;
  j["static_groups"] = s.static_groups;
  j["sym"] = s.sym;
  j["true_sequential"] = s.true_sequential;
  j["model_name_or_path"] = nullptr;
  j["model_file_base_name"] = nullptr;
  j["quant_method"] = "gptq";
  j["checkpoint_format"] = "gptq";
  // GPTQModel's extra keys (readers that do not know them ignore them).
  j["pack_dtype"] = "int32";
  j["lm_head"] = false;
  return j;
}

}  // namespace qtrain
