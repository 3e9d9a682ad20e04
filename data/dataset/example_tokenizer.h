// Masking: a RenderedExample → token ids and a trained mask, with the truncation rules.
//
// Each chunk is tokenized whole (add_special = false unless the chunk asks), so ids are exactly what
// the reference tokenizes (apply_chat_template tokenizes the rendered conversation in one call).
// Trained spans are mapped to tokens by tokenizing each span-boundary prefix: the boundary is at
// the longest common prefix of encode(text[:end]) and encode(text); a token that straddles a
// boundary (a merge across it) goes to the later span. Then each chunk is cut to its max_tokens,
// and the whole example to max_seq_len (or, for split_to_max_len, cut into max_seq_len pieces).
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "data/dataset/rendered_example.h"
#include "data/tokenizer/tokenizer.h"

namespace qtrain {

struct TokenizedExample {
  std::vector<int32_t> ids;     // [length]
  std::vector<uint8_t> trained;  // [length] 1 = the token is a label
};

struct TokenizeOutcome {
  std::vector<TokenizedExample> pieces;  // one, or several for split_to_max_len
  bool truncated = false;                // a chunk or the example lost tokens to a length limit
  bool lost_eos = false;                 // a trained EOS was among the lost tokens
};

TokenizeOutcome tokenize_example(const RenderedExample& ex, const Tokenizer& tok, int64_t max_seq_len,
                                 bool split_to_max_len);

// Tokens that are labels once the loss shifts by one: trained tokens at positions >= 1 (the first
// token of a sequence is never predicted).
int64_t count_label_tokens(const TokenizedExample& e);

}  // namespace qtrain
