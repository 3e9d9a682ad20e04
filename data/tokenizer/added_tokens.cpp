#include "data/tokenizer/added_tokens.h"

#include <algorithm>
#include <cctype>

namespace qtrain {
namespace {

// lstrip / rstrip absorb ASCII whitespace; HF uses char::is_whitespace, which also covers Unicode
// spaces, but added tokens beside U+3000 and friends do not occur in practice.
bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

// A "word character" for single_word: ASCII alphanumerics, '_' and any non-ASCII byte (letters of
// other scripts), as in HF's check on the neighbouring characters.
bool is_word_byte(unsigned char c) { return c >= 0x80 || c == '_' || std::isalnum(c); }

}  // namespace

AddedTokenMatcher::AddedTokenMatcher(const std::vector<AddedToken>& tokens) {
  for (const auto& t : tokens) {
    if (t.content.empty()) continue;
    if (auto it = by_content_.find(t.content); it != by_content_.end()) {
      by_id_.erase(tokens_[it->second].id);
      tokens_[it->second] = t;
      by_id_[t.id] = it->second;
      continue;
    }
    by_content_[t.content] = tokens_.size();
    by_id_[t.id] = tokens_.size();
    tokens_.push_back(t);
  }
  for (size_t i = 0; i < tokens_.size(); ++i)
    by_first_byte_[static_cast<unsigned char>(tokens_[i].content[0])].push_back(i);
  for (auto& v : by_first_byte_)
    std::stable_sort(v.begin(), v.end(), [&](size_t a, size_t b) { return tokens_[a].content.size() > tokens_[b].content.size(); });
}

const AddedToken* AddedTokenMatcher::by_id(int32_t id) const {
  auto it = by_id_.find(id);
  return it == by_id_.end() ? nullptr : &tokens_[it->second];
}

const AddedToken* AddedTokenMatcher::by_content(std::string_view content) const {
  auto it = by_content_.find(std::string(content));
  return it == by_content_.end() ? nullptr : &tokens_[it->second];
}

void AddedTokenMatcher::split(std::string_view text, std::vector<Piece>& out) const {
  size_t plain_begin = 0;  // start of the plain text not yet emitted
  size_t pos = 0;
  while (pos < text.size()) {
    const AddedToken* hit = nullptr;
    for (size_t idx : by_first_byte_[static_cast<unsigned char>(text[pos])]) {
      const AddedToken& t = tokens_[idx];
      if (text.compare(pos, t.content.size(), t.content) != 0) continue;
      if (t.single_word) {
        const size_t end = pos + t.content.size();
        if (pos > 0 && is_word_byte(text[pos - 1])) continue;
        if (end < text.size() && is_word_byte(text[end])) continue;
      }
      hit = &t;
      break;
    }
    if (!hit) {
      ++pos;
      continue;
    }
    size_t begin = pos, end = pos + hit->content.size();
    if (hit->lstrip)
      while (begin > plain_begin && is_space(text[begin - 1])) --begin;
    if (hit->rstrip)
      while (end < text.size() && is_space(text[end])) ++end;
    if (begin > plain_begin) out.push_back({text.substr(plain_begin, begin - plain_begin), -1});
    out.push_back({text.substr(begin, end - begin), hit->id});
    plain_begin = pos = end;
  }
  if (plain_begin < text.size()) out.push_back({text.substr(plain_begin), -1});
}

}  // namespace qtrain
