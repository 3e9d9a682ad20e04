// Masking: a RenderedExample → token ids and a trained mask, with the truncation rules.
//
// Each chunk is tokenized whole, once (add_special = false unless the chunk asks), so ids are exactly
// what the reference tokenizes (apply_chat_template tokenizes the rendered conversation in one call).
// Trained spans are byte ranges of the chunk's text; they are mapped to tokens through the byte
// offsets of that one tokenization (token_offsets): a token is trained when its bytes overlap a
// trained span (transformers' char_to_token rule for return_assistant_tokens_mask: a token straddling
// a boundary is trained). Then each chunk is cut to its max_tokens, and the whole example to
// max_seq_len (or, for split_to_max_len, cut into max_seq_len pieces).
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>
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
  int64_t unlocated_turns = 0;           // from rendering (RenderedRecord), for the linter
  int64_t special_text_in_content = 0;
};

TokenizeOutcome tokenize_example(const RenderedExample& ex, const Tokenizer& tok, int64_t max_seq_len,
                                 bool split_to_max_len);

// Byte offset where each token of `ids` = tok.encode(text, add_special) starts, plus text.size() at
// the end ([ids.size() + 1]); tokens the text does not contain (an added BOS) take zero bytes.
// nullopt when the tokenizer's decoding does not give the text back byte for byte.
std::optional<std::vector<size_t>> token_offsets(const Tokenizer& tok, const std::vector<int32_t>& ids, std::string_view text);

// Tokens that are labels once the loss shifts by one: trained tokens at positions >= 1 (the first
// token of a sequence is never predicted).
int64_t count_label_tokens(const TokenizedExample& e);

}  // namespace qtrain
