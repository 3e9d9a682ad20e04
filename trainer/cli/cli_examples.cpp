#include "trainer/cli/cli_examples.h"

#include <utility>

namespace qtrain::cli {
namespace {

// Longest key first where one is a prefix of another ("qtrain data stats" before "qtrain data").
const std::pair<const char*, const char*> kExamples[] = {
    {"qtrain train", "qtrain train recipes/quickstart.yaml --set training.max_steps=600 --resume"},
    {"qtrain inspect", "qtrain inspect runs/quickstart/base"},
    {"qtrain forward", "qtrain forward runs/quickstart/base --adapter runs/quickstart/adapter --ids 1,200,300 --out logits.safetensors"},
    {"qtrain tokenize", "qtrain tokenize runs/quickstart/base --text \"Write a poem about the sea.\""},
    {"qtrain quantize", "qtrain quantize runs/quickstart/base --out /tmp/base-nf4"},
    {"qtrain dequantize", "qtrain dequantize /tmp/base-nf4 --out /tmp/base-bf16 --dtype bfloat16"},
    {"qtrain export", "qtrain export runs/quickstart --format gptq --calib-len 256"},
    {"qtrain eval", "qtrain eval --model runs/quickstart/base --adapter runs/quickstart/adapter --data recipes/quickstart/train.jsonl --format alpaca"},
    {"qtrain generate", "qtrain generate runs/quickstart/base --adapter runs/quickstart/adapter --prompt \"Once upon a time\" --max-new-tokens 40"},
    {"qtrain report", "qtrain report runs/quickstart            # runs/quickstart/report.html; open it in any browser"},
    {"qtrain plan", "qtrain plan recipes/guanaco.yaml --gpu-mem 24GiB"},
    {"qtrain data preview", "qtrain data preview recipes/quickstart.yaml -n 3"},
    {"qtrain data stats", "qtrain data stats recipes/quickstart.yaml"},
    {"qtrain data render", "qtrain data render template.jinja --messages conversation.json --add-generation-prompt"},
};

}  // namespace

std::string verb_example(const std::string& usage) {
  for (const auto& [verb, example] : kExamples) {
    const std::string v = verb;
    // The verb's words, then a space, a newline or the end: "qtrain export" is not "qtrain exports".
    if (usage.rfind(v, 0) == 0 && (usage.size() == v.size() || usage[v.size()] == ' ' || usage[v.size()] == '\n')) return example;
  }
  return "";
}

}  // namespace qtrain::cli
