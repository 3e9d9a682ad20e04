// The pre-tokenizer regex of byte-level BPE tokenizers (GPT-2, Llama 3, Qwen2), compiled once with
// PCRE2 in UTF + Unicode-property mode (\p{L}, \p{N}, Unicode \s) and JIT, used like the HF
// `Split(pattern, behavior="isolated")` pre-tokenizer: every match is a piece, and so is every
// stretch of text between two matches.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace qtrain {

// The patterns the tokenizer files imply when they do not spell one out.
inline constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
inline constexpr std::string_view kQwen2Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

class PretokenizerRegex {
 public:
  // `where` names the file and key the pattern came from, for the error when it does not compile.
  PretokenizerRegex(std::string_view pattern, const std::string& where);
  ~PretokenizerRegex();
  PretokenizerRegex(PretokenizerRegex&&) noexcept;
  PretokenizerRegex& operator=(PretokenizerRegex&&) noexcept;

  // text must be valid UTF-8 (the JIT matcher does not re-check it). Appends the pieces in order.
  void split(std::string_view text, std::vector<std::string_view>& out) const;

  const std::string& pattern() const { return pattern_; }

 private:
  struct Impl;
  std::string pattern_;
  std::unique_ptr<Impl> impl_;
};

// The regex source for matching `literal` exactly (a Split pre-tokenizer with a String pattern).
std::string regex_quote(std::string_view literal);

}  // namespace qtrain
