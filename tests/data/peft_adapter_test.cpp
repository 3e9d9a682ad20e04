// PEFT adapter files: what load_peft_adapter refuses, by file and reason. (That peft loads our files
// and we load peft's is the oracle's job: tests/oracle/test_training_parity.py.)
#include <gtest/gtest.h>

#include <fstream>

#include "data/error.h"
#include "data/io/peft_adapter.h"
#include "tests/scratch_dir.h"

namespace qtrain {
namespace {

std::string load_error(const std::filesystem::path& dir) {
  try {
    AdapterInfo info;
    load_peft_adapter(dir, &info);
  } catch (const InputError& e) {
    return e.what();
  }
  return "(no InputError)";
}

TEST(PeftAdapter, DeepOrMalformedConfigIsAnInputErrorNamingTheFile) {
  test_tools::ScratchDir tmp("peft");
  const auto cfg = tmp.path / "adapter_config.json";
  // Deep nesting is refused before parsing: copies and dump() of such a value recurse per level.
  std::ofstream(cfg) << std::string(200000, '[') << std::string(200000, ']');
  EXPECT_NE(load_error(tmp.path).find(cfg.string() + ": JSON nested deeper than 512 levels"), std::string::npos)
      << load_error(tmp.path);
  // Negative control: shallow nesting passes that check and fails on what is actually wrong.
  std::ofstream(cfg, std::ios::trunc) << "{\"r\": [[[1]]], \"lora_alpha\": 16, \"target_modules\": [\"q_proj\"]}";
  const std::string shallow = load_error(tmp.path);
  EXPECT_EQ(shallow.find("nested deeper"), std::string::npos) << shallow;
  EXPECT_NE(shallow.find(cfg.string()), std::string::npos) << shallow;
  std::ofstream(cfg, std::ios::trunc) << "{\"r\": 1e999}";
  EXPECT_NE(load_error(tmp.path).find(cfg.string()), std::string::npos) << "a number beyond double: " << load_error(tmp.path);
}

}  // namespace
}  // namespace qtrain
