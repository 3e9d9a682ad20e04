#include "data/tokenizer/bpe_model.h"

#include <array>
#include <climits>
#include <deque>
#include <mutex>
#include <queue>

#include "data/error.h"
#include "data/tokenizer/unicode_nfc.h"
#include "data/tokenizer/utf8.h"

namespace qtrain {

std::string byte_to_alphabet(unsigned char b) {
  const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
  char32_t cp = b;
  if (!printable) {
    // Position of b among the non-printable bytes, which take U+0100, U+0101, ... in order.
    char32_t rank = 0;
    for (unsigned c = 0; c < b; ++c) rank += !((c >= '!' && c <= '~') || (c >= 0xA1 && c <= 0xAC) || c >= 0xAE);
    cp = 0x100 + rank;
  }
  std::string s;
  utf8::append(s, cp);
  return s;
}

namespace {

constexpr size_t kCacheMaxEntries = 1 << 16;  // pieces; cleared when full (text repeats words a lot)
constexpr size_t kCacheMaxPieceBytes = 64;     // longer pieces are rare and not worth keeping

class BpeTokenizer final : public Tokenizer {
 public:
  BpeTokenizer(BpeSpec spec, const ResolvedTokens& tokens) : spec_(std::move(spec)), added_(tokens.added) {
    special_ = tokens.ids;
    int32_t max_id = -1;
    for (const auto& [tok, id] : spec_.vocab) max_id = std::max(max_id, id);
    for (const auto& t : added_.tokens()) max_id = std::max(max_id, t.id);
    vocab_size_ = max_id + 1;
    // The post-processor's ids go into every encoded sequence: they must be real tokens.
    for (const auto& ids : {spec_.prefix, spec_.suffix})
      for (int32_t id : ids)
        if (id < 0 || id >= vocab_size_)
          throw InputError(spec_.source.string() + ": post_processor: token id " + std::to_string(id) +
                           " is outside the vocabulary [0, " + std::to_string(vocab_size_) + ")");
    id_to_token_.resize(vocab_size_);
    id_bytes_.resize(vocab_size_);
    is_model_token_.assign(vocab_size_, false);

    // The alphabet's reverse map, to decode tokens back to bytes.
    std::unordered_map<std::string, unsigned char> from_alphabet;
    for (int b = 0; b < 256; ++b) {
      alphabet_[b] = byte_to_alphabet(static_cast<unsigned char>(b));
      from_alphabet[alphabet_[b]] = static_cast<unsigned char>(b);
      auto it = spec_.vocab.find(alphabet_[b]);
      byte_id_[b] = it == spec_.vocab.end() ? -1 : it->second;
    }
    for (const auto& [tok, id] : spec_.vocab) {
      if (id < 0) throw InputError(spec_.source.string() + ": token '" + tok + "' has a negative id " + std::to_string(id));
      id_to_token_[id] = tok;
      is_model_token_[id] = true;
      std::string bytes;
      for (size_t i = 0; i < tok.size();) {
        const size_t n = std::max<size_t>(1, utf8::sequence_length(tok, i));
        auto it = from_alphabet.find(tok.substr(i, n));
        // A character outside the alphabet (possible in hand-made vocabularies) decodes as itself.
        if (it != from_alphabet.end()) bytes += static_cast<char>(it->second);
        else bytes.append(tok, i, n);
        i += n;
      }
      id_bytes_[id] = std::move(bytes);
    }
    for (const auto& t : added_.tokens()) {
      id_to_token_[t.id] = t.content;
      id_bytes_[t.id] = t.content;  // added tokens are plain text, not in the byte alphabet
    }

    if (spec_.unk_token) {
      auto it = spec_.vocab.find(*spec_.unk_token);
      if (it == spec_.vocab.end())
        throw InputError(spec_.source.string() + ": unk_token '" + *spec_.unk_token + "' is not in the vocabulary");
      unk_ = it->second;
    }

    merges_.reserve(spec_.merges.size());
    for (size_t rank = 0; rank < spec_.merges.size(); ++rank) {
      const auto& m = spec_.merges[rank];
      auto l = spec_.vocab.find(m.left), r = spec_.vocab.find(m.right), c = spec_.vocab.find(m.left + m.right);
      if (l == spec_.vocab.end() || r == spec_.vocab.end() || c == spec_.vocab.end())
        throw InputError(m.where + ": merge '" + m.left + " " + m.right + "' uses a token that is not in the vocabulary");
      // A repeated pair keeps its first (best) rank, as the HF loader does.
      merges_.emplace(pair_key(l->second, r->second), MergeResult{static_cast<int32_t>(rank), c->second});
    }
  }

  std::vector<int32_t> encode(std::string_view text, bool add_special) const override {
    utf8::require_valid(text);
    std::vector<int32_t> out;
    out.reserve(text.size() / 3 + 4);
    if (add_special) out.insert(out.end(), spec_.prefix.begin(), spec_.prefix.end());
    std::vector<AddedTokenMatcher::Piece> segments;
    added_.split(text, segments);
    std::string normalized;
    std::vector<std::string_view> pieces, next;
    std::deque<std::string> prefixed;  // pieces with the prefix space (stable addresses for the views)
    for (const auto& seg : segments) {
      if (seg.id >= 0) {
        out.push_back(seg.id);
        continue;
      }
      std::string_view s = seg.text;
      if (spec_.nfc && nfc_normalize(s, normalized)) s = normalized;
      pieces.assign(1, s);
      prefixed.clear();
      for (size_t k = 0; k <= spec_.splits.size(); ++k) {
        if (k == spec_.prefix_space_after_splits && spec_.add_prefix_space) {
          for (auto& p : pieces) {
            if (!p.empty() && p[0] == ' ') continue;
            prefixed.push_back(" " + std::string(p));
            p = prefixed.back();
          }
        }
        if (k == spec_.splits.size()) break;
        next.clear();
        for (auto p : pieces) spec_.splits[k].split(p, next);
        pieces.swap(next);
      }
      for (auto p : pieces)
        if (!p.empty()) encode_piece(p, out);
    }
    if (add_special) out.insert(out.end(), spec_.suffix.begin(), spec_.suffix.end());
    return out;
  }

  std::string decode(std::span<const int32_t> ids, bool skip_special) const override {
    std::string out;
    for (const int32_t id : ids) {
      check_id(id);
      if (skip_special) {
        const AddedToken* t = added_.by_id(id);
        if (t && t->special) continue;
      }
      out += id_bytes_[id];
    }
    return out;
  }

  int32_t vocab_size() const override { return vocab_size_; }

  std::optional<int32_t> token_to_id(std::string_view token) const override {
    if (const AddedToken* t = added_.by_content(token)) return t->id;
    auto it = spec_.vocab.find(std::string(token));
    if (it == spec_.vocab.end()) return std::nullopt;
    return it->second;
  }

  std::string id_to_token(int32_t id) const override {
    check_id(id);
    return id_to_token_[id];
  }

  bool is_special(int32_t id) const override {
    check_id(id);
    const AddedToken* t = added_.by_id(id);
    return t && t->special;
  }

  std::string describe() const override {
    std::string s = "byte-level BPE " + spec_.source.filename().string() + " (" + std::to_string(spec_.vocab.size()) +
                    " tokens, " + std::to_string(spec_.merges.size()) + " merges, " + std::to_string(added_.tokens().size()) +
                    " added tokens";
    if (spec_.nfc) s += ", NFC";
    for (const auto& re : spec_.splits) s += ", split /" + re.pattern() + "/";
    return s + ")";
  }

 private:
  struct MergeResult {
    int32_t rank;
    int32_t id;
  };
  static uint64_t pair_key(int32_t a, int32_t b) { return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b); }

  const MergeResult* find_merge(int32_t a, int32_t b) const {
    auto it = merges_.find(pair_key(a, b));
    return it == merges_.end() ? nullptr : &it->second;
  }

  void check_id(int32_t id) const {
    if (id < 0 || id >= vocab_size_ || (!is_model_token_[id] && !added_.by_id(id)))
      throw InputError("token id " + std::to_string(id) + " is not in the vocabulary of " + spec_.source.string() +
                       " (size " + std::to_string(vocab_size_) + ")");
  }

  // One pre-tokenized piece (raw bytes) -> ids.
  void encode_piece(std::string_view piece, std::vector<int32_t>& out) const {
    if (piece.size() <= kCacheMaxPieceBytes) {
      std::lock_guard lock(cache_mutex_);
      auto it = cache_.find(piece);
      if (it != cache_.end()) {
        out.insert(out.end(), it->second.begin(), it->second.end());
        return;
      }
    }
    std::vector<int32_t> ids = merge(piece);
    out.insert(out.end(), ids.begin(), ids.end());
    if (piece.size() <= kCacheMaxPieceBytes) {
      std::lock_guard lock(cache_mutex_);
      if (cache_.size() >= kCacheMaxEntries) cache_.clear();
      cache_.emplace(std::string(piece), std::move(ids));
    }
  }

  std::vector<int32_t> merge(std::string_view piece) const {
    if (spec_.ignore_merges) {
      std::string whole;
      for (unsigned char b : piece) whole += alphabet_[b];
      if (auto it = spec_.vocab.find(whole); it != spec_.vocab.end()) return {it->second};
    }
    std::vector<int32_t> syms;
    syms.reserve(piece.size());
    for (unsigned char b : piece) {
      if (byte_id_[b] >= 0) syms.push_back(byte_id_[b]);
      else if (unk_) syms.push_back(*unk_);  // a byte missing from the vocabulary: unk, or dropped as HF does
    }
    return syms.size() <= 48 ? merge_small(std::move(syms)) : merge_large(std::move(syms));
  }

  // Repeatedly merge the best-ranked adjacent pair, leftmost first on ties: quadratic, fastest for
  // the short pieces that are nearly all of real text.
  std::vector<int32_t> merge_small(std::vector<int32_t> syms) const {
    while (syms.size() > 1) {
      int32_t best_rank = INT32_MAX, best_id = -1;
      size_t best_pos = 0;
      for (size_t i = 0; i + 1 < syms.size(); ++i) {
        const MergeResult* m = find_merge(syms[i], syms[i + 1]);
        if (m && m->rank < best_rank) best_rank = m->rank, best_id = m->id, best_pos = i;
      }
      if (best_id < 0) break;
      syms[best_pos] = best_id;
      syms.erase(syms.begin() + best_pos + 1);
    }
    return syms;
  }

  // The same merge order with a heap of candidate pairs over a linked list: n log n for the rare
  // long piece (a run of punctuation, a long number) where the quadratic scan would stall.
  std::vector<int32_t> merge_large(std::vector<int32_t> syms) const {
    const size_t n = syms.size();
    std::vector<int64_t> prev(n), next(n);
    for (size_t i = 0; i < n; ++i) prev[i] = static_cast<int64_t>(i) - 1, next[i] = i + 1 < n ? i + 1 : -1;
    struct Cand {
      int32_t rank;
      int64_t pos;
      int32_t left, right;  // the symbols the pair had when queued; stale entries are skipped
      bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
    };
    std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> heap;
    auto push = [&](int64_t i) {
      if (i < 0 || next[i] < 0) return;
      if (const MergeResult* m = find_merge(syms[i], syms[next[i]])) heap.push({m->rank, i, syms[i], syms[next[i]]});
    };
    for (size_t i = 0; i + 1 < n; ++i) push(static_cast<int64_t>(i));
    std::vector<bool> alive(n, true);
    while (!heap.empty()) {
      const Cand c = heap.top();
      heap.pop();
      if (!alive[c.pos] || next[c.pos] < 0 || syms[c.pos] != c.left || syms[next[c.pos]] != c.right) continue;
      const int64_t r = next[c.pos];
      syms[c.pos] = find_merge(c.left, c.right)->id;
      alive[r] = false;
      next[c.pos] = next[r];
      if (next[r] >= 0) prev[next[r]] = c.pos;
      push(prev[c.pos]);
      push(c.pos);
    }
    std::vector<int32_t> out;
    for (int64_t i = 0; i >= 0; i = next[i]) out.push_back(syms[i]);
    return out;
  }

  BpeSpec spec_;
  AddedTokenMatcher added_;
  int32_t vocab_size_ = 0;
  std::vector<std::string> id_to_token_;
  std::vector<std::string> id_bytes_;  // what each id decodes to
  std::vector<bool> is_model_token_;
  std::array<std::string, 256> alphabet_;
  std::array<int32_t, 256> byte_id_;
  std::optional<int32_t> unk_;
  std::unordered_map<uint64_t, MergeResult> merges_;

  // Piece -> ids; heterogeneous lookup so a string_view finds without a copy.
  struct Hash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  mutable std::mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<int32_t>, Hash, std::equal_to<>> cache_;
};

}  // namespace

std::unique_ptr<Tokenizer> make_bpe_tokenizer(BpeSpec spec, const ResolvedTokens& tokens) {
  return std::make_unique<BpeTokenizer>(std::move(spec), tokens);
}

}  // namespace qtrain
