#include "data/io/bnb_format.h"

#include <charconv>
#include <cmath>

#include "data/error.h"
#include "data/json_depth.h"
#include "ops/dtype_names.h"

namespace qtrain::bnb {
namespace {

const char* type_suffix(ops::QuantType t) { return t == ops::QuantType::kNF4 ? "nf4" : "fp4"; }

std::string blob_name(const std::string& weight_name, ops::QuantType t) {
  return weight_name + ".quant_state.bitsandbytes__" + type_suffix(t);
}

}  // namespace

std::string python_float_repr(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "Infinity" : "-Infinity";
  if (v == 0) return std::signbit(v) ? "-0.0" : "0.0";
  // Shortest round-trip digits and decimal exponent from to_chars' scientific form "d.ddde±XX".
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::scientific);
  std::string sci(buf, res.ptr);
  const bool neg = sci[0] == '-';
  if (neg) sci.erase(0, 1);
  const auto e = sci.find('e');
  std::string digits = sci.substr(0, e);
  digits.erase(std::remove(digits.begin(), digits.end(), '.'), digits.end());
  const int exp10 = std::stoi(sci.substr(e + 1));
  const int decpt = exp10 + 1;  // position of the decimal point relative to the digits
  std::string out;
  if (decpt > -4 && decpt <= 16) {  // Python's 'r' repr uses fixed notation here
    if (decpt <= 0) {
      out = "0." + std::string(-decpt, '0') + digits;
    } else if (decpt >= static_cast<int>(digits.size())) {
      out = digits + std::string(decpt - digits.size(), '0') + ".0";
    } else {
      out = digits.substr(0, decpt) + "." + digits.substr(decpt);
    }
  } else {
    out = digits.substr(0, 1);
    if (digits.size() > 1) out += "." + digits.substr(1);
    char eb[16];
    std::snprintf(eb, sizeof eb, "e%c%02d", exp10 < 0 ? '-' : '+', std::abs(exp10));
    out += eb;
  }
  return neg ? "-" + out : out;
}

bool is_quantized(const safetensors::Checkpoint& ckpt, const std::string& weight_name) {
  return ckpt.contains(blob_name(weight_name, ops::QuantType::kNF4)) ||
         ckpt.contains(blob_name(weight_name, ops::QuantType::kFP4));
}

ops::QuantState load(const safetensors::Checkpoint& ckpt, const std::string& w, at::Device device) {
  const std::string where = ckpt.dir().string() + ": tensor '" + w + "'";
  auto fail = [&](const std::string& msg) -> void { throw InputError(where + " (bitsandbytes 4-bit): " + msg); };
  ops::QuantState s;
  s.type = ckpt.contains(blob_name(w, ops::QuantType::kNF4)) ? ops::QuantType::kNF4 : ops::QuantType::kFP4;
  const std::string blob_key = blob_name(w, s.type);
  at::Tensor blob = ckpt.tensor(blob_key);
  if (blob.scalar_type() != at::kByte || blob.dim() != 1) fail("'" + blob_key + "' must be a 1-D U8 tensor of JSON bytes");
  const std::string text(static_cast<const char*>(blob.data_ptr()), blob.numel());
  if (json_too_deep_at(text) != std::string::npos)
    fail("'" + blob_key + "' nests JSON deeper than " + std::to_string(kMaxJsonDepth) + " levels");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    fail("'" + blob_key + "' is not valid JSON: " + e.what());
  }
  try {
    if (j.at("quant_type").get<std::string>() != type_suffix(s.type))
      fail("quant_type '" + j.at("quant_type").get<std::string>() + "' disagrees with the tensor name '" + blob_key + "'");
    s.blocksize = j.at("blocksize").get<int64_t>();
    s.shape = j.at("shape").get<std::vector<int64_t>>();
    const auto dt = ops::parse_dtype(j.at("dtype").get<std::string>());
    if (!dt) fail("unsupported dtype '" + j.at("dtype").get<std::string>() + "' (expected " + std::string(ops::kDtypeNameList) + ")");
    s.dtype = *dt;
    if (j.contains("nested_blocksize")) {
      s.nested_blocksize = j.at("nested_blocksize").get<int64_t>();
      s.nested_offset = j.at("nested_offset").get<float>();
    }
  } catch (const nlohmann::json::exception& e) {
    fail("'" + blob_key + "' lacks a field or has the wrong type: " + e.what());
  }
  auto get = [&](const std::string& suffix) -> at::Tensor {
    if (!ckpt.contains(w + suffix)) fail("missing companion tensor '" + w + suffix + "'");
    return ckpt.tensor(w + suffix).to(device);
  };
  s.packed = get("").reshape({-1});
  s.absmax = get(".absmax");
  s.quant_map = get(".quant_map");
  const bool nested = j.contains("nested_blocksize");
  if (nested) {
    s.nested_absmax = get(".nested_absmax");
    s.nested_quant_map = get(".nested_quant_map");
  }
  try {
    ops::check_quant_state(s);
  } catch (const c10::Error& e) {
    fail(e.what_without_backtrace());
  }
  // Dequantization uses the built-in code table; refuse a file whose table says otherwise rather than
  // silently computing different weights.
  if (!at::equal(s.quant_map.to(at::kCPU, at::kFloat), ops::code_table(s.type)))
    fail("'" + w + ".quant_map' differs from the standard " + std::string(type_suffix(s.type)) + " table");
  if (nested && !at::equal(s.nested_quant_map.to(at::kCPU, at::kFloat), ops::signed_dynamic_map()))
    fail("'" + w + ".nested_quant_map' differs from bitsandbytes' signed dynamic map");
  return s;
}

std::map<std::string, at::Tensor> to_tensors(const std::string& w, const ops::QuantState& s) {
  std::map<std::string, at::Tensor> out;
  out[w] = s.packed.reshape({-1, 1});  // [(n+1)/2, 1] as Linear4bit stores it
  out[w + ".absmax"] = s.absmax;
  out[w + ".quant_map"] = ops::code_table(s.type);
  // json.dumps of bitsandbytes' QuantState.as_dict(packed=True): this key order, ", " and ": ".
  std::string js = std::string("{\"quant_type\": \"") + type_suffix(s.type) + "\", \"blocksize\": " + std::to_string(s.blocksize) +
                   ", \"dtype\": \"" + ops::dtype_name(s.dtype) + "\", \"shape\": [";
  for (std::size_t i = 0; i < s.shape.size(); ++i) js += (i ? ", " : "") + std::to_string(s.shape[i]);
  js += "]";
  if (s.double_quant()) {
    out[w + ".nested_absmax"] = s.nested_absmax;
    out[w + ".nested_quant_map"] = ops::signed_dynamic_map();
    js += ", \"nested_blocksize\": " + std::to_string(s.nested_blocksize) + ", \"nested_dtype\": \"float32\", \"nested_offset\": " +
          python_float_repr(static_cast<double>(s.nested_offset));
  }
  js += "}";
  at::Tensor blob = at::empty({static_cast<int64_t>(js.size())}, at::kByte);
  std::memcpy(blob.data_ptr(), js.data(), js.size());
  out[blob_name(w, s.type)] = blob;
  return out;
}

nlohmann::ordered_json quantization_config(const ops::QuantParams& p, at::ScalarType compute_dtype) {
  nlohmann::ordered_json q;
  q["_load_in_4bit"] = true;
  q["_load_in_8bit"] = false;
  q["bnb_4bit_compute_dtype"] = ops::dtype_name(compute_dtype);
  q["bnb_4bit_quant_storage"] = "uint8";
  q["bnb_4bit_quant_type"] = type_suffix(p.type);
  q["bnb_4bit_use_double_quant"] = p.double_quant;
  q["llm_int8_enable_fp32_cpu_offload"] = false;
  q["llm_int8_has_fp16_weight"] = false;
  q["llm_int8_skip_modules"] = nullptr;
  q["llm_int8_threshold"] = 6.0;
  q["load_in_4bit"] = true;
  q["load_in_8bit"] = false;
  q["quant_method"] = "bitsandbytes";
  return q;
}

}  // namespace qtrain::bnb
