#include "data/dataset/example_tokenizer.h"

#include <algorithm>

namespace qtrain {
namespace {

size_t common_prefix(const std::vector<int32_t>& a, const std::vector<int32_t>& b) {
  const size_t n = std::min(a.size(), b.size());
  size_t i = 0;
  while (i < n && a[i] == b[i]) ++i;
  return i;
}

bool ends_with_trained(const TokenizedExample& e, std::optional<int32_t> id) {
  return id && !e.ids.empty() && e.ids.back() == *id && e.trained.back();
}

}  // namespace

int64_t count_label_tokens(const TokenizedExample& e) {
  int64_t n = 0;
  for (size_t i = 1; i < e.trained.size(); ++i) n += e.trained[i];
  return n;
}

TokenizeOutcome tokenize_example(const RenderedExample& ex, const Tokenizer& tok, int64_t max_seq_len,
                                 bool split_to_max_len) {
  TokenizeOutcome out;
  TokenizedExample all;
  const auto eos = tok.eos_id();
  for (const Chunk& c : ex.chunks) {
    if (c.text.empty()) continue;
    std::vector<int32_t> ids = tok.encode(c.text, c.add_special);
    std::vector<uint8_t> trained(ids.size(), 0);
    size_t begin = 0;
    for (size_t s = 0; s < c.spans.size(); ++s) {
      const bool last = s + 1 == c.spans.size();
      const size_t end = last ? ids.size()
                              : std::max(begin, common_prefix(tok.encode(std::string_view(c.text).substr(0, c.spans[s].end), c.add_special), ids));
      std::fill(trained.begin() + begin, trained.begin() + end, c.spans[s].trained);
      begin = end;
    }
    TokenizedExample piece{std::move(ids), std::move(trained)};
    if (c.max_tokens > 0 && static_cast<int64_t>(piece.ids.size()) > c.max_tokens) {
      out.truncated = true;
      out.lost_eos |= ends_with_trained(piece, eos);
      piece.ids.resize(c.max_tokens);
      piece.trained.resize(c.max_tokens);
    }
    all.ids.insert(all.ids.end(), piece.ids.begin(), piece.ids.end());
    all.trained.insert(all.trained.end(), piece.trained.begin(), piece.trained.end());
  }
  const auto max = static_cast<size_t>(max_seq_len);
  if (split_to_max_len) {
    for (size_t b = 0; b < all.ids.size(); b += max) {
      const size_t e = std::min(all.ids.size(), b + max);
      out.pieces.push_back({std::vector<int32_t>(all.ids.begin() + b, all.ids.begin() + e),
                            std::vector<uint8_t>(all.trained.begin() + b, all.trained.begin() + e)});
    }
    return out;
  }
  if (all.ids.size() > max) {
    out.truncated = true;
    out.lost_eos |= ends_with_trained(all, eos);
    all.ids.resize(max);
    all.trained.resize(max);
  }
  out.pieces.push_back(std::move(all));
  return out;
}

}  // namespace qtrain
