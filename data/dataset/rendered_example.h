// An example as text, before tokenization: what the formats and chat templates produce and what
// example_tokenizer.h turns into ids and labels.
//
// An example is a list of chunks, each tokenized on its own (add_special = false, so special tokens
// are written as text: "<s>", "<|im_start|>"), then concatenated. QLoRA's collator tokenizes the
// source (BOS + prompt) and the target (output + EOS) separately and cuts each to its own limit
// (formats.md §4.5), so guanaco/alpaca have two chunks; a chat template renders the whole
// conversation as one chunk, which is what transformers' apply_chat_template tokenizes.
// Within a chunk, spans mark which bytes are trained.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace qtrain {

struct TextSpan {
  size_t end;    // byte offset in Chunk::text where the span ends; spans cover the chunk in order
  bool trained;  // the tokens of these bytes get labels
};

struct Chunk {
  std::string text;
  std::vector<TextSpan> spans;  // never empty when text is not empty; the last ends at text.size()
  int64_t max_tokens = 0;       // the chunk is cut to this many tokens (0 = no limit)
  bool add_special = false;     // let the tokenizer add its BOS/EOS (format text)

  // Appends text as a span; adjacent spans with the same flag merge.
  void add(std::string_view s, bool trained) {
    if (s.empty()) return;
    text.append(s);
    if (!spans.empty() && spans.back().trained == trained) spans.back().end = text.size();
    else spans.push_back({text.size(), trained});
  }
};

struct RenderedExample {
  std::vector<Chunk> chunks;
};

}  // namespace qtrain
