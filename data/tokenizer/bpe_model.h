// The byte-level BPE tokenizer itself, once its files are read (bpe_tokenizer.cpp reads them):
//   text -> added tokens cut out -> [NFC] -> regex pre-tokenizer stages -> [prefix space] ->
//   bytes mapped to the GPT-2 byte alphabet -> merges by rank (cached per piece) -> ids,
// with the post-processor's fixed ids around the result, and decode mapping the alphabet back to
// the exact bytes.
#pragma once

#include <filesystem>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "data/tokenizer/pretokenizer_regex.h"
#include "data/tokenizer/tokenizer.h"
#include "data/tokenizer/tokenizer_config.h"

namespace qtrain {

struct BpeSpec {
  std::filesystem::path source;  // the file the model came from, for messages
  std::unordered_map<std::string, int32_t> vocab;  // token (in the byte alphabet) -> id
  struct Merge {
    std::string left, right;
    std::string where;  // "merges.txt:12" / "tokenizer.json: model.merges[11]"
  };
  std::vector<Merge> merges;  // by rank
  std::vector<PretokenizerRegex> splits;  // applied in order, each splitting every piece further
  // ByteLevel's add_prefix_space: " " before each piece that does not start with one, applied (as HF
  // tokenizers' ByteLevel does) to the pieces that exist when the ByteLevel step runs: after the first
  // prefix_space_after_splits splits and before its own regex. For a lone ByteLevel (GPT-2, RoBERTa)
  // that is once per segment of text between added tokens, not once per regex piece.
  bool add_prefix_space = false;
  size_t prefix_space_after_splits = 0;
  bool nfc = false;
  bool ignore_merges = false;  // a piece that is a whole vocab entry skips the merges (Llama 3)
  std::optional<std::string> unk_token;
  // Post-processor: ids put before / after the text when encoding with add_special.
  std::vector<int32_t> prefix, suffix;
};

// The GPT-2 byte alphabet: the printable Latin-1 bytes stand for themselves and the other 68 bytes
// (controls, space, DEL, NBSP, soft hyphen) are moved to U+0100.. in byte order, so every token
// is printable text. Returns the UTF-8 of the character standing for byte b.
std::string byte_to_alphabet(unsigned char b);

std::unique_ptr<Tokenizer> make_bpe_tokenizer(BpeSpec spec, const ResolvedTokens& tokens);

}  // namespace qtrain
