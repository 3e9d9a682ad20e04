// Added tokens: strings that the tokenizer files declare as whole tokens ("<|im_start|>", "</s>",
// "[INST]"), matched in the raw text before the model's own segmentation, the way the Hugging Face
// AddedVocabulary does (leftmost match, longest token at that position, lstrip/rstrip absorb the
// whitespace beside the token, single_word refuses a match inside a word).
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace qtrain {

struct AddedToken {
  std::string content;
  int32_t id = -1;
  bool special = false;      // dropped by decode(skip_special); a "special token" in HF terms
  bool lstrip = false;       // the match also swallows whitespace on its left
  bool rstrip = false;       // ... and on its right
  bool single_word = false;  // only matches when not glued to a word character
};

class AddedTokenMatcher {
 public:
  AddedTokenMatcher() = default;
  // Later entries with the same content or id replace earlier ones.
  explicit AddedTokenMatcher(const std::vector<AddedToken>& tokens);

  // A run of the text: plain text (id < 0) for the model to segment, or one matched added token.
  struct Piece {
    std::string_view text;
    int32_t id;
  };
  // Appends the pieces of text in order; plain pieces are never empty.
  void split(std::string_view text, std::vector<Piece>& out) const;

  bool empty() const { return tokens_.empty(); }
  const AddedToken* by_id(int32_t id) const;
  const AddedToken* by_content(std::string_view content) const;
  const std::vector<AddedToken>& tokens() const { return tokens_; }

 private:
  std::vector<AddedToken> tokens_;
  std::unordered_map<int32_t, size_t> by_id_;
  std::unordered_map<std::string, size_t> by_content_;
  // Candidates by first byte, longest first: a scan tests only tokens that can start at a byte.
  std::array<std::vector<size_t>, 256> by_first_byte_;
};

}  // namespace qtrain
