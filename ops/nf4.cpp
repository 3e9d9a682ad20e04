// NF4/FP4 tensor API: argument checks, device dispatch, the double-quant orchestration on the CPU, and the
// pure-libtorch dequantize used as an independent comparison path.
#include "ops/nf4.h"
#include "ops/nf4_math.h"

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <array>
#include <cmath>
#include <cstdint>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace qtrain::ops {

namespace {

const char* type_name(QuantType t) {
  switch (t) {
    case QuantType::kNF4: return "nf4";
    case QuantType::kFP4: return "fp4";
  }
  TORCH_CHECK(false, "nf4: unknown QuantType value ", static_cast<int>(t), " (expected kNF4 or kFP4)");
}

bool is_float_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kBFloat16 || t == at::kHalf;
}

void check_params(const QuantParams& p) {
  TORCH_CHECK(valid_blocksize(p.blocksize), "quantize_4bit: blocksize must be ", kBlocksizeChoices, ", found ",
              p.blocksize);
  (void)type_name(p.type);  // rejects an out-of-range enum value
}

void check_input(const at::Tensor& w, const QuantParams& p) {
  TORCH_CHECK(w.defined(), "quantize_4bit: tensor w is undefined");
  TORCH_CHECK(is_float_dtype(w.scalar_type()),
              "quantize_4bit: tensor w must be float32, bfloat16 or float16, found ", w.scalar_type());
  TORCH_CHECK(w.numel() > 0, "quantize_4bit: tensor w must have at least one element, found shape ", w.sizes());
  check_params(p);
}

// bnb rejects nothing and quantizes NaN/inf into garbage; a non-finite weight is a corrupt checkpoint.
void check_finite_absmax(const at::Tensor& absmax_f32) {
  const at::Tensor bad = at::logical_not(at::isfinite(absmax_f32));
  if (bad.any().item<bool>()) {
    const int64_t block = bad.nonzero().min().item<int64_t>();
    TORCH_CHECK(false, "quantize_4bit: tensor w must be finite, found NaN or inf in block ", block,
                " (elements from ", block, " * blocksize)");
  }
}

QuantState make_state(const at::Tensor& w, const QuantParams& p) {
  QuantState s;
  s.blocksize = p.blocksize;
  s.type = p.type;
  s.shape = w.sizes().vec();
  s.dtype = w.scalar_type();
  s.quant_map = code_table(p.type, w.device());
  return s;
}

// Double quantization of the fp32 scales on the CPU (bnb: offset = absmax.mean(); quantize_blockwise(absmax -
// offset, blocksize=256) with the signed dynamic map). at::mean on the CPU is exactly what bnb calls.
void double_quantize_cpu(QuantState& s, const at::Tensor& absmax_f32) {
  const at::Tensor dyn = signed_dynamic_map();
  const std::vector<uint8_t> lut = nf4_cpu::build_nested_lut(dyn.data_ptr<float>());
  const int64_t nb = absmax_f32.numel();
  s.nested_offset = absmax_f32.mean().item<float>();
  at::Tensor q = at::empty({nb}, at::kByte);
  at::Tensor a2 = at::empty({(nb + 255) / 256}, at::kFloat);
  nf4_cpu::quantize_nested_reference(absmax_f32.data_ptr<float>(), nb, s.nested_offset, lut.data(),
                                     q.data_ptr<uint8_t>(), a2.data_ptr<float>());
  s.absmax = q;
  s.nested_absmax = a2;
  s.nested_quant_map = dyn;
}

QuantState quantize_cpu(const at::Tensor& w, const QuantParams& p) {
  const at::Tensor x = w.to(at::kFloat).contiguous().reshape({-1});  // bnb: A.reshape(-1).float()
  const int64_t n = x.numel();
  QuantState s = make_state(w, p);
  s.packed = at::empty({(n + 1) / 2}, at::kByte);
  at::Tensor absmax = at::empty({(n + p.blocksize - 1) / p.blocksize}, at::kFloat);
  nf4_cpu::quantize_fast(x.data_ptr<float>(), n, p.blocksize, p.type, s.packed.data_ptr<uint8_t>(),
                         absmax.data_ptr<float>());
  check_finite_absmax(absmax);
  if (p.double_quant) {
    double_quantize_cpu(s, absmax);
  } else {
    s.absmax = absmax;
  }
  return s;
}

// The fp32 scales [nblocks] on the CPU: one fused loop for double quant (the tensor-op chain of
// dequantize_absmax allocates and passes over four [nblocks] temporaries: index, repeat_interleave, mul, add).
at::Tensor absmax_cpu(const QuantState& s) {
  if (!s.double_quant()) return s.absmax.contiguous();
  const at::Tensor q = s.absmax.contiguous();
  const at::Tensor a2 = s.nested_absmax.contiguous();
  const at::Tensor dyn = s.nested_quant_map.contiguous();
  at::Tensor absmax = at::empty({q.numel()}, at::kFloat);
  nf4_cpu::decode_nested_absmax(q.data_ptr<uint8_t>(), q.numel(), a2.data_ptr<float>(), dyn.data_ptr<float>(),
                                s.nested_offset, absmax.data_ptr<float>());
  return absmax;
}

void dequantize_cpu_into(const QuantState& s, at::Tensor& out) {
  const at::ScalarType out_dtype = out.scalar_type();
  const at::Tensor absmax = absmax_cpu(s);
  const at::Tensor packed = s.packed.contiguous();
  const int64_t n = s.numel();
  switch (out_dtype) {
    case at::kFloat:
      nf4_cpu::dequantize_fast(packed.data_ptr<uint8_t>(), absmax.data_ptr<float>(), n, s.blocksize, s.type,
                               out.data_ptr<float>());
      break;
    case at::kBFloat16:
      nf4_cpu::dequantize_fast(packed.data_ptr<uint8_t>(), absmax.data_ptr<float>(), n, s.blocksize, s.type,
                               out.data_ptr<c10::BFloat16>());
      break;
    case at::kHalf:
      nf4_cpu::dequantize_fast(packed.data_ptr<uint8_t>(), absmax.data_ptr<float>(), n, s.blocksize, s.type,
                               out.data_ptr<c10::Half>());
      break;
    default:
      TORCH_CHECK(false, "dequantize_4bit: out_dtype must be float32, bfloat16 or float16, found ", out_dtype);
  }
}

// A fresh CPU output of tens of MiB comes from a new glibc mapping that every call page-faults in, one
// 4 KiB page at a time: that cost more than the decode itself (docs/PERFORMANCE.md). Asking for transparent
// huge pages on the untouched output (what torch does under THP_MEM_ALLOC_ENABLE) makes it one fault per
// 2 MiB. Advice only: where THP is off or the call fails, nothing changes but the speed.
void advise_huge_pages(const at::Tensor& t) {
#if defined(__linux__)
  constexpr uintptr_t kHuge = uintptr_t{2} << 20;
  const size_t bytes = t.nbytes();
  if (bytes < 4 * kHuge) return;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(t.data_ptr()) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(t.data_ptr()) + bytes) & ~(kHuge - 1);
  if (end > begin) (void)madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)t;
#endif
}

at::Tensor dequantize_cpu(const QuantState& s, at::ScalarType out_dtype) {
  at::Tensor out = at::empty(s.shape, at::TensorOptions().dtype(out_dtype));
  advise_huge_pages(out);
  dequantize_cpu_into(s, out);
  return out;
}

}  // namespace

int64_t QuantState::numel() const {
  int64_t n = 1;
  for (const int64_t d : shape) n *= d;
  return n;
}

at::Tensor code_table(QuantType type) {
  const nf4_math::CodeTables t;
  (void)type_name(type);  // rejects an out-of-range enum value
  const float* v = type == QuantType::kFP4 ? t.fp4 : t.nf4;
  return at::tensor(at::ArrayRef<float>(v, 16), at::kFloat);
}

namespace {

// formats.md §1.7, with the same torch ops (and so the same float32 roundings) as bnb's Python. A constant
// of the process, built on first use: every quantize call needs it, and 30 small torch ops per call were a
// host-side table rebuilt per weight.
const std::array<float, 256>& dynamic_map_values() {
  static const std::array<float, 256> values = [] {
    std::vector<at::Tensor> parts;
    for (int i = 0; i < 7; ++i) {
      const int64_t items = (int64_t{1} << i) + 1;
      const at::Tensor b = at::linspace(0.1, 1.0, items, at::kFloat);
      const at::Tensor means = (b.slice(0, 0, items - 1) + b.slice(0, 1, items)) / 2.0;
      const double scale = std::pow(10.0, i - 6);  // Python's 10 ** (i - 6): a double, cast to float by the op
      parts.push_back(means * scale);
      parts.push_back(means * -scale);
    }
    parts.push_back(at::zeros({1}, at::kFloat));
    parts.push_back(at::ones({1}, at::kFloat));
    const at::Tensor sorted = std::get<0>(at::cat(parts).sort()).contiguous();
    TORCH_CHECK(sorted.numel() == 256, "signed_dynamic_map: expected 256 values, built ", sorted.numel());
    std::array<float, 256> v{};
    std::copy_n(sorted.data_ptr<float>(), 256, v.begin());
    return v;
  }();
  return values;
}

// A small host table on `device`: on a GPU through pinned memory with a non-blocking copy, queued on the
// current stream like a kernel (a plain .to(cuda) from pageable memory synchronises the host with the stream).
at::Tensor host_table_to(const at::Tensor& table, at::Device device) {
  if (device.is_cpu()) return table;
  return table.pin_memory().to(device, /*non_blocking=*/true);
}

}  // namespace

at::Tensor signed_dynamic_map() {
  const std::array<float, 256>& v = dynamic_map_values();
  return at::tensor(at::ArrayRef<float>(v.data(), v.size()), at::kFloat);
}

at::Tensor signed_dynamic_map(at::Device device) { return host_table_to(signed_dynamic_map(), device); }

at::Tensor code_table(QuantType type, at::Device device) { return host_table_to(code_table(type), device); }

void check_quant_state(const QuantState& s) {
  check_params(QuantParams{s.type, s.blocksize, s.double_quant()});
  TORCH_CHECK(!s.shape.empty() || s.numel() == 1, "QuantState: shape must be set");
  const int64_t n = s.numel();
  TORCH_CHECK(n > 0, "QuantState: shape must have at least one element, found ", at::IntArrayRef(s.shape));
  TORCH_CHECK(is_float_dtype(s.dtype), "QuantState: dtype must be float32, bfloat16 or float16, found ", s.dtype);
  TORCH_CHECK(s.packed.defined() && s.packed.scalar_type() == at::kByte && s.packed.numel() == (n + 1) / 2,
              "QuantState: packed must be uint8 with ceil(n/2) = ", (n + 1) / 2, " elements for shape ",
              at::IntArrayRef(s.shape), ", found ",
              s.packed.defined() ? toString(s.packed.scalar_type()) : "undefined", " with ",
              s.packed.defined() ? s.packed.numel() : 0, " elements");
  const int64_t nb = s.num_blocks();
  TORCH_CHECK(s.absmax.defined() && s.absmax.numel() == nb, "QuantState: absmax must have ceil(n/blocksize) = ", nb,
              " elements, found ", s.absmax.defined() ? s.absmax.numel() : 0);
  TORCH_CHECK(s.absmax.device() == s.packed.device(), "QuantState: absmax is on ", s.absmax.device(),
              " but packed is on ", s.packed.device());
  if (s.double_quant()) {
    TORCH_CHECK(s.absmax.scalar_type() == at::kByte,
                "QuantState: absmax must be uint8 with double quantization, found ", s.absmax.scalar_type());
    TORCH_CHECK(s.nested_blocksize == 256, "QuantState: nested_blocksize must be 256, found ", s.nested_blocksize);
    const int64_t nb2 = (nb + 255) / 256;
    TORCH_CHECK(s.nested_absmax.scalar_type() == at::kFloat && s.nested_absmax.numel() == nb2,
                "QuantState: nested_absmax must be float32 with ceil(nblocks/256) = ", nb2, " elements, found ",
                s.nested_absmax.scalar_type(), " with ", s.nested_absmax.numel());
    TORCH_CHECK(s.nested_quant_map.defined() && s.nested_quant_map.scalar_type() == at::kFloat &&
                    s.nested_quant_map.numel() == 256,
                "QuantState: nested_quant_map must be float32 [256]");
    TORCH_CHECK(s.nested_absmax.device() == s.packed.device() && s.nested_quant_map.device() == s.packed.device(),
                "QuantState: nested_absmax / nested_quant_map must be on ", s.packed.device());
  } else {
    TORCH_CHECK(s.absmax.scalar_type() == at::kFloat,
                "QuantState: absmax must be float32 without double quantization, found ", s.absmax.scalar_type());
  }
}

at::Tensor dequantize_absmax(const QuantState& s) {
  if (!s.double_quant()) return s.absmax;
  // Each nested scale broadcasts over its block of 256 codes: [nb2] -> [nb2, 256] (a view) -> [nb]. Not
  // repeat_interleave, which on a GPU reads its output size back to the host.
  const int64_t nb = s.absmax.numel();
  const int64_t nb2 = s.nested_absmax.numel();
  const at::Tensor dyn = s.nested_quant_map.index({s.absmax.to(at::kLong)});  // [nb]
  const at::Tensor a2 = s.nested_absmax.unsqueeze(1).expand({nb2, 256}).reshape({-1}).slice(0, 0, nb);  // [nb]
  return dyn * a2 + s.nested_offset;  // two float32 roundings, as bnb
}

QuantState quantize_4bit(const at::Tensor& w, const QuantParams& params) {
  check_input(w, params);
  if (w.is_cpu()) return quantize_cpu(w, params);
#if defined(QTRAIN_WITH_CUDA)
  if (w.is_cuda()) return nf4_cuda::quantize_4bit(w, params);
#endif
  TORCH_CHECK(false, "quantize_4bit: tensor w must be on the CPU or a CUDA device (in a CUDA build), found ",
              w.device());
}

at::Tensor dequantize_4bit(const QuantState& state, at::ScalarType out_dtype) {
  check_quant_state(state);
  TORCH_CHECK(is_float_dtype(out_dtype), "dequantize_4bit: out_dtype must be float32, bfloat16 or float16, found ",
              out_dtype);
  if (state.device().is_cpu()) return dequantize_cpu(state, out_dtype);
#if defined(QTRAIN_WITH_CUDA)
  if (state.device().is_cuda()) return nf4_cuda::dequantize_4bit(state, out_dtype);
#endif
  TORCH_CHECK(false, "dequantize_4bit: state must be on the CPU or a CUDA device (in a CUDA build), found ",
              state.device());
}

void dequantize_4bit_out(const QuantState& state, at::Tensor& out) {
  check_quant_state(state);
  TORCH_CHECK(out.defined() && is_float_dtype(out.scalar_type()),
              "dequantize_4bit_out: out must be float32, bfloat16 or float16, found ",
              out.defined() ? toString(out.scalar_type()) : "undefined");
  TORCH_CHECK(out.is_contiguous() && out.numel() == state.numel(), "dequantize_4bit_out: out must be contiguous with ",
              state.numel(), " elements, found ", out.numel(), out.is_contiguous() ? "" : " (not contiguous)");
  TORCH_CHECK(out.device() == state.device(), "dequantize_4bit_out: out is on ", out.device(), " but the state on ",
              state.device());
  if (state.device().is_cpu()) {
    dequantize_cpu_into(state, out);
    return;
  }
#if defined(QTRAIN_WITH_CUDA)
  if (state.device().is_cuda()) {
    nf4_cuda::dequantize_4bit_out(state, out);  // straight into `out`, at any element offset
    return;
  }
#endif
  TORCH_CHECK(false, "dequantize_4bit_out: state must be on the CPU or a CUDA device (in a CUDA build), found ",
              state.device());
}

at::Tensor dequantize_4bit_fallback(const QuantState& state, at::ScalarType out_dtype) {
  check_quant_state(state);
  TORCH_CHECK(is_float_dtype(out_dtype), "dequantize_4bit_fallback: out_dtype must be float32, bfloat16 or "
              "float16, found ", out_dtype);
  const int64_t n = state.numel();
  const int64_t bs = state.blocksize;
  const at::Tensor packed = state.packed.reshape({-1});
  // [ceil(n/2), 2] -> [2*ceil(n/2)]: high nibble first.
  const at::Tensor codes = at::stack({packed.bitwise_right_shift(4), packed.bitwise_and(0x0F)}, 1)
                               .reshape({-1})
                               .slice(0, 0, n)
                               .to(at::kLong);
  const at::Tensor values = code_table(state.type, packed.device()).index({codes});  // [n] fp32
  const at::Tensor absmax = dequantize_absmax(state).to(at::kFloat);                 // [nblocks]
  const int64_t nb = absmax.numel();
  const at::Tensor scale = absmax.unsqueeze(1).expand({nb, bs}).reshape({-1}).slice(0, 0, n);  // [n]
  return (values * scale).to(out_dtype).reshape(state.shape);
}

}  // namespace qtrain::ops
