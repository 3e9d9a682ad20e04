// config.json -> ModelConfig (data/io/hf_config.cpp). The input is the file's text.
#include "data/io/hf_config.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  qtrain::fuzz::expect_clean_errors({"config.json"}, [&] {
    const qtrain::ModelConfig c = qtrain::parse_model_config_text(text, "fuzz/config.json");
    (void)qtrain::family_name(c.family);
    (void)qtrain::rope_type_name(c.rope.type);
  });
  return 0;
}
