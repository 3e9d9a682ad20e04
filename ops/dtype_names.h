// The one table of floating-point dtype names, spelled as torch spells them (torch.bfloat16 →
// "bfloat16"): what config.json's torch_dtype, bitsandbytes' quant_state and compute dtype, the CLI's
// --dtype options and the test tools' manifests use. The short aliases ("bf16") are for the command line
// only; files are read with parse_dtype, which accepts exactly what torch and transformers write.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>

namespace qtrain::ops {

struct DtypeName {
  at::ScalarType type;
  std::string_view name;   // torch's spelling
  std::string_view alias;  // the command line's short form
};

inline constexpr DtypeName kDtypeNames[] = {
    {at::kFloat, "float32", "fp32"},
    {at::kBFloat16, "bfloat16", "bf16"},
    {at::kHalf, "float16", "fp16"},
};

// For error messages: "float32, bfloat16 or float16".
inline constexpr std::string_view kDtypeNameList = "float32, bfloat16 or float16";

// Throws std::invalid_argument naming the type for anything outside the table.
inline std::string dtype_name(at::ScalarType t) {
  for (const auto& d : kDtypeNames)
    if (d.type == t) return std::string(d.name);
  throw std::invalid_argument(std::string("no dtype name for ") + c10::toString(t) + " (expected " +
                              std::string(kDtypeNameList) + ")");
}

// Torch's spelling only ("bfloat16"); nullopt for anything else.
inline std::optional<at::ScalarType> parse_dtype(std::string_view s) {
  for (const auto& d : kDtypeNames)
    if (d.name == s) return d.type;
  return std::nullopt;
}

// Torch's spelling or the short alias ("bf16"), for command-line options.
inline std::optional<at::ScalarType> parse_dtype_or_alias(std::string_view s) {
  for (const auto& d : kDtypeNames)
    if (d.name == s || d.alias == s) return d.type;
  return std::nullopt;
}

}  // namespace qtrain::ops
