#include "data/io/awq_format.h"

#include <string>
#include <vector>

#include "data/error.h"

namespace qtrain {
namespace fs = std::filesystem;

namespace {

at::Tensor order_tensor() { return at::tensor(std::vector<int64_t>(kAwqOrder, kAwqOrder + 8), at::kLong); }
at::Tensor nibble_shifts() { return at::arange(8, at::TensorOptions().dtype(at::kLong)) * 4; }

// v [rows, cols] (0..15, cols % 8 == 0) → int32 [rows, cols/8]: word c, nibble i = v[:, 8c + kAwqOrder[i]].
// Disjoint shifted fields summed in int64 = the bitwise or; wrapped to int32 (two's complement) as
// AutoAWQ's int32 |= does.
at::Tensor pack_interleaved(const at::Tensor& v) {
  const int64_t rows = v.size(0), words = v.size(1) / 8;
  at::Tensor x = v.to(at::kLong).reshape({rows, words, 8}).index_select(2, order_tensor());  // [rows, words, nibble]
  return at::bitwise_left_shift(x, nibble_shifts().view({1, 1, 8})).sum(2).to(at::kInt).contiguous();
}

// The inverse: int32 [rows, words] → int64 [rows, 8·words] in channel order.
at::Tensor unpack_interleaved(const at::Tensor& words) {
  const int64_t rows = words.size(0), n = words.size(1);
  at::Tensor w = words.to(at::kLong) & 0xFFFFFFFFLL;
  at::Tensor nib = at::bitwise_right_shift(w.unsqueeze(2), nibble_shifts().view({1, 1, 8})) & 0xF;  // [rows, n, nibble]
  // channel 8c + kAwqOrder[i] = nibble i  ⇔  channel j = nibble reverse[j]
  at::Tensor ch = at::empty_like(nib);
  ch.index_copy_(2, order_tensor(), nib);
  return ch.reshape({rows, n * 8});
}

void check_bits(int bits, const std::string& what) {
  if (bits != 4)
    throw UsageError(what + ": AWQ GEMM stores 4-bit codes only (8 a word, the layout vLLM's awq kernels read), found " +
                     std::to_string(bits) + " bits");
}

}  // namespace

std::map<std::string, at::Tensor> pack_awq_gemm(const std::string& prefix, const GptqLinear& q, int64_t group_size) {
  check_bits(q.bits, prefix);
  const int64_t out = q.out(), in = q.in();
  if (out % 8 != 0)
    throw UsageError(prefix + ": AWQ GEMM packs qweight and qzeros along the output dimension 8 to a word, so " +
                     "out_features must be a multiple of 8, found " + std::to_string(out));
  const int64_t groups = gptq_num_groups(in, group_size), width = gptq_group_width(in, group_size);
  if (q.scales.sizes() != at::IntArrayRef{groups, out} || q.zeros.sizes() != at::IntArrayRef{groups, out} ||
      q.g_idx.sizes() != at::IntArrayRef{in})
    throw UsageError(prefix + ": a " + std::to_string(out) + "x" + std::to_string(in) + " linear with group_size " +
                     std::to_string(group_size) + " has " + std::to_string(groups) + " groups; got codes " +
                     c10::str(q.codes.sizes()) + ", scales " + c10::str(q.scales.sizes()) + ", zeros " +
                     c10::str(q.zeros.sizes()) + ", g_idx " + c10::str(q.g_idx.sizes()));
  const at::Tensor trivial = at::floor_divide(at::arange(in, at::kLong), width);
  if (!at::equal(q.g_idx.cpu().to(at::kLong), trivial))
    throw UsageError(prefix + ": AWQ groups are contiguous runs of " + std::to_string(width) +
                     " input columns; this linear's g_idx is permuted (act-order cannot be stored as AWQ)");
  const at::Tensor codes = q.codes.cpu().to(at::kLong), zeros = q.zeros.cpu().to(at::kLong);
  if (in > 0 && (codes.min().item<int64_t>() < 0 || codes.max().item<int64_t>() > 15))
    throw UsageError(prefix + ": codes outside [0, 15]");
  if (groups > 0 && (zeros.min().item<int64_t>() < 0 || zeros.max().item<int64_t>() > 15))
    throw UsageError(prefix + ": zero points outside [0, 15] (AWQ stores the true zero in 4 bits)");
  const at::Tensor scales = q.scales.cpu().to(at::kFloat);
  if (!at::isfinite(scales).all().item<bool>() || (scales.numel() > 0 && scales.abs().max().item<double>() > 65504.0))
    throw UsageError(prefix + ": scales must be finite and within fp16's range (±65504)");

  std::map<std::string, at::Tensor> t;
  t[prefix + ".qweight"] = pack_interleaved(codes.t().contiguous());  // [in, out/8]
  t[prefix + ".qzeros"] = pack_interleaved(zeros);                      // [groups, out/8]
  t[prefix + ".scales"] = scales.to(at::kHalf).contiguous();            // [groups, out]
  return t;
}

GptqLinear unpack_awq_gemm(const TensorGetter& get, const std::string& source, const std::string& prefix, int64_t out,
                           int64_t in, int bits, int64_t group_size) {
  check_bits(bits, source + ": '" + prefix + "'");
  const int64_t groups = gptq_num_groups(in, group_size);
  auto fail = [&](const std::string& name, const std::string& msg) -> void {
    throw InputError(source + ": AWQ tensor '" + name + "' " + msg);
  };
  if (out % 8 != 0)
    fail(prefix + ".qweight", "cannot hold a " + std::to_string(out) + "x" + std::to_string(in) +
                                  " linear in AWQ GEMM (out_features must be a multiple of 8)");
  auto fetch = [&](const std::string& suffix, std::vector<int64_t> shape, bool integer) {
    const std::string name = prefix + suffix;
    at::Tensor t = get(name);
    if (!t.defined()) fail(name, "is missing (expected shape " + c10::str(at::IntArrayRef(shape)) + ")");
    if (integer ? t.scalar_type() != at::kInt : !at::isFloatingType(t.scalar_type()))
      fail(name, std::string("has dtype ") + c10::toString(t.scalar_type()) + ", expected " +
                     (integer ? "int32" : "a float type (fp16)"));
    if (t.sizes() != at::IntArrayRef(shape))
      fail(name, "has shape " + c10::str(t.sizes()) + ", expected " + c10::str(at::IntArrayRef(shape)) + " for a " +
                     std::to_string(out) + "x" + std::to_string(in) + " linear with group_size " +
                     std::to_string(group_size) + " (AWQ GEMM: qweight [in, out/8], qzeros [groups, out/8], scales [groups, out])");
    return t;
  };
  const at::Tensor qweight = fetch(".qweight", {in, out / 8}, true);
  const at::Tensor qzeros = fetch(".qzeros", {groups, out / 8}, true);
  const at::Tensor scales = fetch(".scales", {groups, out}, false);

  GptqLinear q;
  q.bits = bits;
  q.codes = unpack_interleaved(qweight.cpu()).t().to(at::kByte).contiguous();  // [out, in]
  q.zeros = unpack_interleaved(qzeros.cpu()).to(at::kInt).contiguous();       // [groups, out]
  q.scales = scales.cpu().to(at::kFloat).contiguous();
  if (!at::isfinite(q.scales).all().item<bool>()) fail(prefix + ".scales", "holds a non-finite value");
  q.g_idx = at::floor_divide(at::arange(in, at::kLong), gptq_group_width(in, group_size)).to(at::kInt);
  return q;
}

GptqLinear unpack_awq_gemm(const safetensors::Checkpoint& ckpt, const std::string& prefix, int64_t out, int64_t in,
                           int bits, int64_t group_size) {
  std::string source = ckpt.dir().string();
  if (ckpt.contains(prefix + ".qweight"))
    for (const fs::path& f : ckpt.files())
      if (safetensors::File::open(f)->contains(prefix + ".qweight")) source = f.string();
  const TensorGetter get = [&](const std::string& name) {
    return ckpt.contains(name) ? ckpt.tensor(name) : at::Tensor();
  };
  return unpack_awq_gemm(get, source, prefix, out, in, bits, group_size);
}

nlohmann::ordered_json awq_quantization_config(const AwqSettings& s) {
  check_bits(s.bits, "quantization_config");
  nlohmann::ordered_json j;
  j["quant_method"] = "awq";
  j["bits"] = s.bits;
  j["group_size"] = s.group_size;
  j["zero_point"] = true;
  j["version"] = "gemm";
  j["modules_to_not_convert"] = nullptr;
  return j;
}

}  // namespace qtrain
