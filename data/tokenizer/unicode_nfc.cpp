#include "data/tokenizer/unicode_nfc.h"

#include <algorithm>
#include <cstdint>
#include <vector>

#include "data/tokenizer/utf8.h"

namespace qtrain {
namespace {

struct CccEntry {
  char32_t cp;
  uint8_t ccc;
};
struct DecompEntry {
  char32_t cp;
  uint16_t offset, length;
};
struct CompEntry {
  char32_t first, second, composite;
};
struct Range {
  char32_t lo, hi;
};

#include "data/tokenizer/unicode_nfc_tables.inc"

// Hangul syllables decompose and compose by arithmetic (Unicode §3.12), not by table.
constexpr char32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr char32_t kLCount = 19, kVCount = 21, kTCount = 28, kNCount = kVCount * kTCount, kSCount = kLCount * kNCount;

uint8_t ccc(char32_t cp) {
  if (cp < 0x300) return 0;
  auto it = std::lower_bound(std::begin(kCcc), std::end(kCcc), cp, [](const CccEntry& e, char32_t c) { return e.cp < c; });
  return it != std::end(kCcc) && it->cp == cp ? it->ccc : 0;
}

bool maybe_changes(char32_t cp) {
  if (cp < 0x300) return false;
  auto it = std::upper_bound(std::begin(kMaybeChanges), std::end(kMaybeChanges), cp,
                             [](char32_t c, const Range& r) { return c < r.lo; });
  return it != std::begin(kMaybeChanges) && cp <= std::prev(it)->hi;
}

void decompose(char32_t cp, std::vector<char32_t>& out) {
  if (cp >= kSBase && cp < kSBase + kSCount) {
    const char32_t s = cp - kSBase;
    out.push_back(kLBase + s / kNCount);
    out.push_back(kVBase + (s % kNCount) / kTCount);
    if (s % kTCount) out.push_back(kTBase + s % kTCount);
    return;
  }
  auto it = std::lower_bound(std::begin(kDecomp), std::end(kDecomp), cp, [](const DecompEntry& e, char32_t c) { return e.cp < c; });
  if (it != std::end(kDecomp) && it->cp == cp)
    out.insert(out.end(), kDecompData + it->offset, kDecompData + it->offset + it->length);
  else
    out.push_back(cp);
}

// The primary composite of (a, b), or 0.
char32_t compose(char32_t a, char32_t b) {
  if (a >= kLBase && a < kLBase + kLCount && b >= kVBase && b < kVBase + kVCount)
    return kSBase + ((a - kLBase) * kVCount + (b - kVBase)) * kTCount;
  if (a >= kSBase && a < kSBase + kSCount && (a - kSBase) % kTCount == 0 && b > kTBase && b < kTBase + kTCount)
    return a + (b - kTBase);
  auto it = std::lower_bound(std::begin(kComp), std::end(kComp), std::pair{a, b}, [](const CompEntry& e, std::pair<char32_t, char32_t> k) {
    return e.first != k.first ? e.first < k.first : e.second < k.second;
  });
  return it != std::end(kComp) && it->first == a && it->second == b ? it->composite : 0;
}

}  // namespace

bool nfc_normalize(std::string_view text, std::string& out) {
  std::vector<char32_t> cps;
  bool needed = false;
  for (size_t i = 0; i < text.size();) {
    const size_t n = utf8::sequence_length(text, i);
    if (n == 0) return false;  // callers validate first; never normalise what is not UTF-8
    const char32_t cp = utf8::decode(text, i, n);
    needed |= maybe_changes(cp);
    cps.push_back(cp);
    i += n;
  }
  if (!needed) return false;

  std::vector<char32_t> d;
  d.reserve(cps.size() + 8);
  for (char32_t cp : cps) decompose(cp, d);
  // Canonical ordering: stable sort of every run of non-starters by combining class.
  for (size_t i = 0; i < d.size();) {
    if (ccc(d[i]) == 0) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < d.size() && ccc(d[j]) != 0) ++j;
    std::stable_sort(d.begin() + i, d.begin() + j, [](char32_t a, char32_t b) { return ccc(a) < ccc(b); });
    i = j;
  }
  // Canonical composition (UAX #15): a mark joins the last starter unless a character between them
  // blocks it (a starter, or a mark of the same or higher class).
  size_t starter = 0, kept = 1;
  int last_class = ccc(d[0]) ? 256 : 0;  // a leading mark blocks everything after it
  for (size_t i = 1; i < d.size(); ++i) {
    const char32_t ch = d[i];
    const int cls = ccc(ch);
    const char32_t c = compose(d[starter], ch);
    if (c && (last_class < cls || last_class == 0)) {
      d[starter] = c;
      continue;
    }
    if (cls == 0) starter = kept;
    last_class = cls;
    d[kept++] = ch;
  }
  d.resize(kept);
  out.clear();
  for (char32_t cp : d) utf8::append(out, cp);
  return true;
}

}  // namespace qtrain
