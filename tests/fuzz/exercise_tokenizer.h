// After a fuzzed tokenizer loads, use it the way the data pipeline and `qtrain tokenize` do: encode
// with and without special tokens, decode both ways, and look every id it produced up again. Errors
// here (invalid UTF-8 in the text, an id outside the vocabulary) must be qtrain::Errors; any other
// exception or a crash is a finding.
#pragma once

#include <string_view>
#include <vector>

#include "data/tokenizer/tokenizer.h"
#include "tests/fuzz/fuzz_util.h"

namespace qtrain::fuzz {

inline void exercise_tokenizer(const Tokenizer& tok, std::string_view text) {
  try {
    (void)tok.describe();
    const int32_t n = tok.vocab_size();
    for (bool add_special : {false, true}) {
      std::vector<int32_t> ids = tok.encode(text, add_special);
      // The ids go straight into an embedding lookup: each must be a real token.
      for (int32_t id : ids)
        if (id < 0 || id >= n) finding("encode produced an id outside the vocabulary", "-", std::to_string(id) + " of " + std::to_string(n));
      for (bool skip : {false, true}) (void)tok.decode(ids, skip);
      for (int32_t id : ids) {
        const std::string t = tok.id_to_token(id);
        (void)tok.is_special(id);
        (void)tok.token_to_id(t);
      }
    }
    // Ids the text may not reach: both ends and the middle of the vocabulary (gaps between the model's
    // tokens and the added ones), and the role tokens.
    std::vector<int32_t> edge = {0, n / 3, n / 2, 2 * n / 3, n - 2, n - 1};
    for (const auto& id : {tok.bos_id(), tok.eos_id(), tok.pad_id(), tok.unk_id()}) {
      if (!id) continue;
      // The pipeline writes role ids into batches unchecked: they must be real ids.
      if (*id < 0 || *id >= n)
        finding("a role token id is outside the vocabulary", "-", std::to_string(*id) + " of " + std::to_string(n));
      edge.push_back(*id);
    }
    for (int32_t id : edge) {
      if (id < 0 || id >= n) continue;
      try {
        (void)tok.id_to_token(id);
        (void)tok.is_special(id);
        (void)tok.decode(std::span<const int32_t>(&id, 1), false);
      } catch (const Error&) {
        // An id in a gap of the vocabulary is refused by name.
      }
    }
  } catch (const Error&) {
    // Documented: invalid UTF-8 in the text, an id outside the vocabulary.
  } catch (const std::exception& e) {
    finding("undocumented exception from a loaded tokenizer", typeid(e).name(), e.what());
  }
}

}  // namespace qtrain::fuzz
