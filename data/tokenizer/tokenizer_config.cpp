#include "data/tokenizer/tokenizer_config.h"

#include <fstream>
#include <sstream>

#include "data/error.h"
#include "data/json_depth.h"

namespace qtrain {
namespace {

std::optional<bool> read_bool(const nlohmann::json& j, const std::filesystem::path& path, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return std::nullopt;
  if (!it->is_boolean()) throw_bad_key(path, key, "a boolean", *it);
  return it->get<bool>();
}

// A token may be spelled as a string or as an AddedToken object {"content": ..., "lstrip": ...}.
std::string token_content(const nlohmann::json& v, const std::filesystem::path& path, std::string_view key) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
  throw_bad_key(path, key, "a string or an object with a string \"content\"", v);
}

void read_role(const nlohmann::json& j, const std::filesystem::path& path, const char* key, RoleToken& role) {
  auto it = j.find(key);
  if (it == j.end()) return;
  role.given = true;
  role.content = it->is_null() ? std::nullopt : std::optional<std::string>(token_content(*it, path, key));
}

bool flag(const nlohmann::json& obj, const char* key, bool fallback, const std::filesystem::path& path,
          const std::string& where) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return fallback;
  if (!it->is_boolean()) throw_bad_key(path, where + "." + key, "a boolean", *it);
  return it->get<bool>();
}

}  // namespace

void throw_bad_key(const std::filesystem::path& path, std::string_view key, std::string_view expected,
                   const nlohmann::json& found) {
  std::string shown = found.dump();
  if (shown.size() > 60) shown = shown.substr(0, 57) + "...";
  throw InputError(path.string() + ": key '" + std::string(key) + "': expected " + std::string(expected) + ", found " +
                   found.type_name() + " " + shown);
}

nlohmann::json read_json_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw InputError(path.string() + ": cannot open file");
  std::ostringstream ss;
  ss << in.rdbuf();
  const std::string text = ss.str();
  // nlohmann reports a byte offset; users look for a line.
  auto line_col = [&](size_t at) {
    size_t line = 1, col = 1;
    for (size_t i = 0; i < at && i < text.size(); ++i) {
      if (text[i] == '\n') ++line, col = 1;
      else ++col;
    }
    return ":" + std::to_string(line) + ":" + std::to_string(col);
  };
  if (const size_t deep = json_too_deep_at(text); deep != std::string::npos)
    throw InputError(path.string() + line_col(deep) + ": JSON nested deeper than " + std::to_string(kMaxJsonDepth) + " levels");
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    throw InputError(path.string() + line_col(e.byte == 0 ? 0 : e.byte - 1) + ": malformed JSON (" + e.what() + ")");
  } catch (const nlohmann::json::exception& e) {  // out_of_range: a number too large for a double
    throw InputError(path.string() + ": malformed JSON (" + e.what() + ")");
  }
}

TokenizerConfig read_tokenizer_config(const std::filesystem::path& dir) {
  TokenizerConfig c;
  c.dir = dir;

  const auto map_path = dir / "special_tokens_map.json";
  nlohmann::json special_map;
  if (std::filesystem::exists(map_path)) {
    special_map = read_json_file(map_path);
    if (!special_map.is_object()) throw_bad_key(map_path, "(top level)", "an object", special_map);
  }

  const auto cfg_path = dir / "tokenizer_config.json";
  if (std::filesystem::exists(cfg_path)) {
    const nlohmann::json j = read_json_file(cfg_path);
    if (!j.is_object()) throw_bad_key(cfg_path, "(top level)", "an object", j);
    if (auto it = j.find("tokenizer_class"); it != j.end() && !it->is_null()) {
      if (!it->is_string()) throw_bad_key(cfg_path, "tokenizer_class", "a string", *it);
      c.tokenizer_class = it->get<std::string>();
    }
    c.add_bos_token = read_bool(j, cfg_path, "add_bos_token");
    c.add_eos_token = read_bool(j, cfg_path, "add_eos_token");
    c.legacy = read_bool(j, cfg_path, "legacy");
    c.add_prefix_space = read_bool(j, cfg_path, "add_prefix_space");
    read_role(j, cfg_path, "bos_token", c.bos);
    read_role(j, cfg_path, "eos_token", c.eos);
    read_role(j, cfg_path, "pad_token", c.pad);
    read_role(j, cfg_path, "unk_token", c.unk);
    if (auto it = j.find("added_tokens_decoder"); it != j.end() && !it->is_null()) {
      if (!it->is_object()) throw_bad_key(cfg_path, "added_tokens_decoder", "an object {id: token}", *it);
      for (const auto& [id_str, tok] : it->items()) {
        const std::string where = "added_tokens_decoder." + id_str;
        AddedToken t;
        try {
          size_t used = 0;
          t.id = std::stoi(id_str, &used);
          if (used != id_str.size() || t.id < 0 || t.id > kMaxTokenId) throw std::invalid_argument(id_str);
        } catch (const std::exception&) {
          throw_bad_key(cfg_path, where, "a token id in [0, 2^24) as the key", nlohmann::json(id_str));
        }
        if (!tok.is_object()) throw_bad_key(cfg_path, where, "an object", tok);
        t.content = token_content(tok, cfg_path, where);
        t.special = flag(tok, "special", false, cfg_path, where);
        t.lstrip = flag(tok, "lstrip", false, cfg_path, where);
        t.rstrip = flag(tok, "rstrip", false, cfg_path, where);
        t.single_word = flag(tok, "single_word", false, cfg_path, where);
        c.added_tokens.push_back(std::move(t));
      }
    }
    // transformers 4 writes additional_special_tokens; 5 writes extra_special_tokens (a list, or a
    // {name: token} object).
    for (const char* key : {"additional_special_tokens", "extra_special_tokens"}) {
      auto it = j.find(key);
      if (it == j.end() || it->is_null()) continue;
      if (!it->is_array() && !it->is_object()) throw_bad_key(cfg_path, key, "a list of tokens", *it);
      for (const auto& v : *it) c.additional_special_tokens.push_back(token_content(v, cfg_path, key));
    }
  }

  // special_tokens_map.json fills in what tokenizer_config.json left unsaid.
  if (special_map.is_object()) {
    if (!c.bos.given) read_role(special_map, map_path, "bos_token", c.bos);
    if (!c.eos.given) read_role(special_map, map_path, "eos_token", c.eos);
    if (!c.pad.given) read_role(special_map, map_path, "pad_token", c.pad);
    if (!c.unk.given) read_role(special_map, map_path, "unk_token", c.unk);
    if (auto it = special_map.find("additional_special_tokens"); it != special_map.end() && it->is_array())
      for (const auto& v : *it)
        c.additional_special_tokens.push_back(token_content(v, map_path, "additional_special_tokens"));
  }

  const auto added_path = dir / "added_tokens.json";
  if (std::filesystem::exists(added_path)) {
    const nlohmann::json j = read_json_file(added_path);
    if (!j.is_object()) throw_bad_key(added_path, "(top level)", "an object {token: id}", j);
    for (const auto& [content, id] : j.items()) {
      if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > kMaxTokenId)
        throw_bad_key(added_path, content, "a token id in [0, 2^24)", id);
      bool known = false;
      for (const auto& t : c.added_tokens) known |= t.content == content;
      if (known) continue;
      AddedToken t;
      t.content = content;
      t.id = id.get<int32_t>();
      c.added_tokens.push_back(std::move(t));
    }
  }
  return c;
}

ResolvedTokens resolve_added_tokens(const TokenizerConfig& c, const RoleDefaults& defaults,
                                    const std::function<std::optional<int32_t>(std::string_view)>& lookup) {
  ResolvedTokens r;
  r.added = c.added_tokens;
  auto mark_special = [&](const std::string& content) -> std::optional<int32_t> {
    for (auto& t : r.added)
      if (t.content == content) {
        t.special = true;
        return t.id;
      }
    const auto id = lookup(content);
    if (id) {
      AddedToken t;
      t.content = content;
      t.id = *id;
      t.special = true;
      r.added.push_back(std::move(t));
    }
    return id;
  };
  auto role = [&](const RoleToken& given, const std::optional<std::string>& fallback) -> std::optional<int32_t> {
    const std::optional<std::string> content = given.given ? given.content : fallback;
    if (!content) return std::nullopt;
    return mark_special(*content);
  };
  r.ids.bos = role(c.bos, defaults.bos);
  r.ids.eos = role(c.eos, defaults.eos);
  r.ids.pad = role(c.pad, defaults.pad);
  r.ids.unk = role(c.unk, defaults.unk);
  for (const auto& s : c.additional_special_tokens) mark_special(s);
  return r;
}

}  // namespace qtrain
