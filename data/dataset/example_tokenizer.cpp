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

// Offsets from per-token texts, each the decoding of the token after `anchor` (which decodes to a
// fixed prefix); the sentencepiece decoder drops a word-start space at the start of a decoding, so
// a token alone may lose its leading space where it does not in context. The first token is decoded
// alone: its leading space is the dummy prefix sentencepiece adds, which the text does not have.
std::optional<std::vector<size_t>> offsets_from_pieces(const Tokenizer& tok, const std::vector<int32_t>& ids, std::string_view text,
                                                       std::optional<int32_t> anchor) {
  std::vector<size_t> off(ids.size() + 1, 0);
  std::string anchor_text;
  if (anchor) anchor_text = tok.decode(std::vector<int32_t>{*anchor}, false);
  size_t pos = 0;
  for (size_t k = 0; k < ids.size(); ++k) {
    off[k] = pos;
    std::string piece;
    if (anchor && k > 0) {
      piece = tok.decode(std::vector<int32_t>{*anchor, ids[k]}, false);
      if (piece.compare(0, anchor_text.size(), anchor_text) != 0) return std::nullopt;
      piece.erase(0, anchor_text.size());
    } else {
      piece = tok.decode(std::vector<int32_t>{ids[k]}, false);
    }
    // A special token the text does not contain (BOS added by the post-processor) takes no bytes.
    if (text.compare(pos, piece.size(), piece) != 0) {
      if (tok.is_special(ids[k])) continue;
      return std::nullopt;
    }
    pos += piece.size();
  }
  off[ids.size()] = pos;
  if (pos != text.size()) return std::nullopt;
  return off;
}

// Which tokens overlap the trained spans of a chunk ([ids]); a zero-width token (an added BOS)
// counts as inside a span that contains its position.
std::vector<uint8_t> mask_from_offsets(const Chunk& c, const std::vector<size_t>& off) {
  const size_t n = off.size() - 1;
  std::vector<uint8_t> trained(n, 0);
  size_t b = 0;
  for (const TextSpan& s : c.spans) {
    const size_t e = s.end;
    if (s.trained && e > b)
      for (size_t j = 0; j < n; ++j)
        if ((off[j] < e && off[j + 1] > b) || (off[j] == off[j + 1] && off[j] >= b && off[j] < e)) trained[j] = 1;
    b = e;
  }
  return trained;
}

// The old way, for a tokenizer whose decoding is not byte-exact: the boundary of each span is where
// the tokenization of the text up to it stops agreeing with the whole.
std::vector<uint8_t> mask_from_prefixes(const Chunk& c, const Tokenizer& tok, const std::vector<int32_t>& ids) {
  std::vector<uint8_t> trained(ids.size(), 0);
  size_t begin = 0;
  for (size_t s = 0; s < c.spans.size(); ++s) {
    const bool last = s + 1 == c.spans.size();
    const size_t end = last ? ids.size()
                            : std::max(begin, common_prefix(tok.encode(std::string_view(c.text).substr(0, c.spans[s].end), c.add_special), ids));
    std::fill(trained.begin() + static_cast<long>(begin), trained.begin() + static_cast<long>(end), c.spans[s].trained);
    begin = end;
  }
  return trained;
}

}  // namespace

std::optional<std::vector<size_t>> token_offsets(const Tokenizer& tok, const std::vector<int32_t>& ids, std::string_view text) {
  if (auto off = offsets_from_pieces(tok, ids, text, std::nullopt)) return off;
  // Anchor: a token that decodes to text of its own ("a" in every vocabulary we read).
  const auto a = tok.encode("a", false);
  if (a.size() == 1)
    if (auto off = offsets_from_pieces(tok, ids, text, a[0])) return off;
  return std::nullopt;
}

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
    std::vector<uint8_t> trained;
    if (c.spans.size() == 1) {
      trained.assign(ids.size(), c.spans[0].trained);
    } else if (auto off = token_offsets(tok, ids, c.text)) {
      trained = mask_from_offsets(c, *off);
    } else {
      trained = mask_from_prefixes(c, tok, ids);
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
