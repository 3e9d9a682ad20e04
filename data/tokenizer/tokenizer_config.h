// The side files of a Hugging Face tokenizer directory, merged into one typed view:
// tokenizer_config.json (class, add_bos/eos_token, legacy, role tokens, added_tokens_decoder),
// special_tokens_map.json (role tokens, additional special tokens) and added_tokens.json.
// Every tokenizer backend (sentencepiece, byte-level BPE) reads its policy from here.
#pragma once

#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "data/tokenizer/added_tokens.h"
#include "data/tokenizer/tokenizer.h"

namespace qtrain {

// A role token (bos/eos/pad/unk): `given` is false when no file names it (the backend's default
// then applies); given with no content means the files set it to null on purpose.
struct RoleToken {
  bool given = false;
  std::optional<std::string> content;
};

// The largest token id any tokenizer file may use: far above real vocabularies (256k), low enough that
// tables indexed by id stay small when a malformed file names an id like 2^31 - 1.
inline constexpr int64_t kMaxTokenId = (int64_t{1} << 24) - 1;

struct TokenizerConfig {
  std::filesystem::path dir;
  std::string tokenizer_class;  // "" when tokenizer_config.json is absent or silent
  std::optional<bool> add_bos_token, add_eos_token, legacy, add_prefix_space;
  RoleToken bos, eos, pad, unk;
  // added_tokens_decoder, then added_tokens.json entries it did not cover (ids from the files).
  std::vector<AddedToken> added_tokens;
  std::vector<std::string> additional_special_tokens;
};

// Reads whichever of the three files exist in dir (none is required). Throws InputError naming
// the file, line and key when one is malformed.
TokenizerConfig read_tokenizer_config(const std::filesystem::path& dir);

// The role tokens a tokenizer class assumes when the files do not name them.
struct RoleDefaults {
  std::optional<std::string> bos, eos, pad, unk;
};

struct ResolvedTokens {
  std::vector<AddedToken> added;  // what the AddedTokenMatcher matches
  SpecialIds ids;
};

// Every role token and additional special token becomes a special added token (HF tokenizer classes
// register them so), its id taken from the added tokens or else from `lookup` (the model vocab).
// A role token found nowhere is left without an id.
ResolvedTokens resolve_added_tokens(const TokenizerConfig& c, const RoleDefaults& defaults,
                                    const std::function<std::optional<int32_t>(std::string_view)>& lookup);

// Parses a JSON file; a syntax error becomes an InputError naming the file, line and column.
nlohmann::json read_json_file(const std::filesystem::path& path);

// "file: key 'k': expected <what>, found <json type>" for errors about one key.
[[noreturn]] void throw_bad_key(const std::filesystem::path& path, std::string_view key, std::string_view expected,
                                const nlohmann::json& found);

}  // namespace qtrain
