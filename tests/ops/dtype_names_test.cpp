// The one dtype-name table: torch's spellings round-trip, files accept exactly those, the command line
// also takes the short aliases, and anything else is refused (nullopt, or an error naming the type).
#include <gtest/gtest.h>

#include "ops/dtype_names.h"

namespace qtrain::ops {
namespace {

TEST(DtypeNames, TorchSpellingsRoundTrip) {
  for (const auto& d : kDtypeNames) {
    EXPECT_EQ(dtype_name(d.type), d.name);
    EXPECT_EQ(parse_dtype(d.name), d.type) << d.name;
    EXPECT_EQ(parse_dtype_or_alias(d.name), d.type) << d.name;
    EXPECT_EQ(parse_dtype_or_alias(d.alias), d.type) << d.alias;
    EXPECT_NE(kDtypeNameList.find(d.name), std::string_view::npos) << "the message list misses " << d.name;
  }
  EXPECT_EQ(parse_dtype("bfloat16"), at::kBFloat16);
  EXPECT_EQ(parse_dtype_or_alias("fp16"), at::kHalf);
}

TEST(DtypeNames, FilesTakeNoAliasesAndUnknownNamesAreRefused) {
  for (const char* s : {"bf16", "fp32", "fp16"}) EXPECT_FALSE(parse_dtype(s)) << s << " is not how torch spells it";
  for (const char* s : {"", "float", "BFloat16", "float64", "auto", "bfloat16 "}) {
    EXPECT_FALSE(parse_dtype(s)) << "'" << s << "'";
    EXPECT_FALSE(parse_dtype_or_alias(s)) << "'" << s << "'";
  }
  try {
    dtype_name(at::kDouble);
    FAIL() << "named a dtype outside the table";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("Double"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace qtrain::ops
