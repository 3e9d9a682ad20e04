// Unicode Normalization Form C, for tokenizers whose files ask for it (Qwen2's NFC normalizer).
// Tables are generated (data/tokenizer/unicode_nfc_tables.inc, by scripts/gen_unicode_nfc_tables.py).
#pragma once

#include <string>
#include <string_view>

namespace qtrain {

// text must be valid UTF-8. Returns false and leaves `out` alone when text is already in NFC by the
// quick check (no character that NFC could change), the common case, so callers avoid a copy.
bool nfc_normalize(std::string_view text, std::string& out);

}  // namespace qtrain
