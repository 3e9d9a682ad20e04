// Reading byte-level BPE tokenizers from disk into a BpeSpec (bpe_model.h): the tokenizer.json
// pipeline (normalizer, pre_tokenizer, model, added_tokens, post_processor) or the GPT-2 pair
// vocab.json + merges.txt with the policy transformers' tokenizer classes imply.
#include "data/tokenizer/bpe_tokenizer.h"

#include <fstream>

#include "data/tokenizer/bpe_model.h"
#include "data/error.h"

namespace qtrain {
namespace {

std::string type_of(const nlohmann::json& node) {
  if (!node.is_object()) return "";
  auto it = node.find("type");
  return it != node.end() && it->is_string() ? it->get<std::string>() : "";
}

bool get_flag(const nlohmann::json& node, const char* key, bool fallback, const std::filesystem::path& path,
              const std::string& where) {
  auto it = node.find(key);
  if (it == node.end() || it->is_null()) return fallback;
  if (!it->is_boolean()) throw_bad_key(path, where + "." + key, "a boolean", *it);
  return it->get<bool>();
}

int32_t token_id(const nlohmann::json& v, const std::filesystem::path& path, const std::string& where) {
  if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > kMaxTokenId)
    throw_bad_key(path, where, "a token id in [0, 2^24)", v);
  return v.get<int32_t>();
}

void read_vocab(const nlohmann::json& v, const std::filesystem::path& path, const std::string& where, BpeSpec& spec) {
  if (!v.is_object()) throw_bad_key(path, where, "an object {token: id}", v);
  spec.vocab.reserve(v.size());
  for (const auto& [tok, id] : v.items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > kMaxTokenId)
      throw_bad_key(path, where + "." + tok, "a token id in [0, 2^24)", id);
    spec.vocab.emplace(tok, id.get<int32_t>());
  }
}

void read_normalizer(const nlohmann::json& n, const std::filesystem::path& path, const std::string& where, BpeSpec& spec) {
  if (n.is_null()) return;
  const std::string t = type_of(n);
  if (t == "NFC") {
    spec.nfc = true;
  } else if (t == "Sequence" && n.contains("normalizers") && n["normalizers"].is_array()) {
    for (size_t i = 0; i < n["normalizers"].size(); ++i)
      read_normalizer(n["normalizers"][i], path, where + ".normalizers[" + std::to_string(i) + "]", spec);
  } else {
    throw InputError(path.string() + ": key '" + where + "': normalizer '" + (t.empty() ? n.dump() : t) +
                     "' is not supported for byte-level BPE (supported: null, NFC, a Sequence of those)");
  }
}

// ByteLevel (with or without its own GPT-2 regex) and Split(Isolated) stages, in order.
void read_pre_tokenizer(const nlohmann::json& p, const std::filesystem::path& path, const std::string& where, BpeSpec& spec) {
  const std::string t = type_of(p);
  if (t == "Sequence" && p.contains("pretokenizers") && p["pretokenizers"].is_array()) {
    for (size_t i = 0; i < p["pretokenizers"].size(); ++i)
      read_pre_tokenizer(p["pretokenizers"][i], path, where + ".pretokenizers[" + std::to_string(i) + "]", spec);
  } else if (t == "ByteLevel") {
    spec.add_prefix_space = get_flag(p, "add_prefix_space", false, path, where);
    spec.prefix_space_after_splits = spec.splits.size();  // the pieces of the splits before this step
    if (get_flag(p, "use_regex", true, path, where)) spec.splits.emplace_back(kGpt2Pattern, path.string() + ": " + where);
  } else if (t == "Split") {
    const std::string behavior = p.contains("behavior") && p["behavior"].is_string() ? p["behavior"].get<std::string>() : "";
    if (behavior != "Isolated" || get_flag(p, "invert", false, path, where))
      throw InputError(path.string() + ": key '" + where + "': Split with behavior '" + behavior +
                       "' is not supported (supported: Isolated, invert false)");
    const auto& pat = p.contains("pattern") ? p["pattern"] : nlohmann::json();
    if (pat.is_object() && pat.contains("Regex") && pat["Regex"].is_string())
      spec.splits.emplace_back(pat["Regex"].get<std::string>(), path.string() + ": " + where + ".pattern.Regex");
    else if (pat.is_object() && pat.contains("String") && pat["String"].is_string())
      spec.splits.emplace_back(regex_quote(pat["String"].get<std::string>()), path.string() + ": " + where + ".pattern.String");
    else
      throw_bad_key(path, where + ".pattern", "{\"Regex\": ...} or {\"String\": ...}", pat);
  } else {
    throw InputError(path.string() + ": key '" + where + "': pre-tokenizer '" + (t.empty() ? p.dump() : t) +
                     "' is not supported (supported: ByteLevel, Split, Sequence)");
  }
}

// The ids a post-processor puts around a single sequence.
void read_post_processor(const nlohmann::json& p, const std::filesystem::path& path, const std::string& where,
                         std::vector<int32_t>& prefix, std::vector<int32_t>& suffix) {
  if (p.is_null()) return;
  const std::string t = type_of(p);
  if (t == "ByteLevel") return;  // only adjusts offsets
  if (t == "Sequence" && p.contains("processors") && p["processors"].is_array()) {
    for (size_t i = 0; i < p["processors"].size(); ++i)
      read_post_processor(p["processors"][i], path, where + ".processors[" + std::to_string(i) + "]", prefix, suffix);
    return;
  }
  if (t == "TemplateProcessing") {
    const auto& single = p.contains("single") ? p["single"] : nlohmann::json();
    const auto& specials = p.contains("special_tokens") ? p["special_tokens"] : nlohmann::json::object();
    if (!single.is_array()) throw_bad_key(path, where + ".single", "an array", single);
    bool after = false;
    for (size_t i = 0; i < single.size(); ++i) {
      const auto& item = single[i];
      const std::string at = where + ".single[" + std::to_string(i) + "]";
      if (item.contains("Sequence")) {
        after = true;
      } else if (item.contains("SpecialToken") && item["SpecialToken"].contains("id")) {
        const auto& name_json = item["SpecialToken"]["id"];
        if (!name_json.is_string()) throw_bad_key(path, at + ".SpecialToken.id", "a string", name_json);
        const std::string name = name_json.get<std::string>();
        if (!specials.is_object() || !specials.contains(name) || !specials[name].contains("ids") || !specials[name]["ids"].is_array())
          throw InputError(path.string() + ": key '" + at + "': special token '" + name + "' has no ids in " + where +
                           ".special_tokens");
        for (const auto& id : specials[name]["ids"]) (after ? suffix : prefix).push_back(token_id(id, path, where + ".special_tokens." + name));
      } else {
        throw_bad_key(path, at, "{\"Sequence\": ...} or {\"SpecialToken\": ...}", item);
      }
    }
    return;
  }
  if (t == "RobertaProcessing" || t == "BertProcessing") {
    const auto& cls = p.contains("cls") ? p["cls"] : nlohmann::json();
    const auto& sep = p.contains("sep") ? p["sep"] : nlohmann::json();
    if (!cls.is_array() || cls.size() != 2 || !sep.is_array() || sep.size() != 2)
      throw_bad_key(path, where, "cls and sep as [token, id]", p);
    prefix.push_back(token_id(cls[1], path, where + ".cls"));
    suffix.push_back(token_id(sep[1], path, where + ".sep"));
    return;
  }
  throw InputError(path.string() + ": key '" + where + "': post-processor '" + (t.empty() ? p.dump() : t) +
                   "' is not supported (supported: ByteLevel, TemplateProcessing, RobertaProcessing, BertProcessing, Sequence)");
}

// add_bos_token / add_eos_token in tokenizer_config.json, when given, decide the post-processor
// (transformers rebuilds its template from them).
void apply_config_post_processing(const TokenizerConfig& c, const ResolvedTokens& r, BpeSpec& spec) {
  auto require = [&](const std::optional<int32_t>& id, const char* what) {
    if (!id)
      throw InputError((c.dir / "tokenizer_config.json").string() + ": " + what + " is true but the tokenizer has no " +
                       (std::string(what) == "add_bos_token" ? "bos_token" : "eos_token"));
    return *id;
  };
  if (c.add_bos_token) {
    spec.prefix.clear();
    if (*c.add_bos_token) spec.prefix.push_back(require(r.ids.bos, "add_bos_token"));
  }
  if (c.add_eos_token) {
    spec.suffix.clear();
    if (*c.add_eos_token) spec.suffix.push_back(require(r.ids.eos, "add_eos_token"));
  }
}

}  // namespace

bool is_byte_level_bpe(const nlohmann::json& j) {
  if (!j.is_object() || !j.contains("pre_tokenizer")) return false;
  const auto& p = j["pre_tokenizer"];
  if (type_of(p) == "ByteLevel") return true;
  if (type_of(p) == "Sequence" && p.contains("pretokenizers") && p["pretokenizers"].is_array())
    for (const auto& s : p["pretokenizers"])
      if (type_of(s) == "ByteLevel") return true;
  return false;
}

std::unique_ptr<Tokenizer> make_bpe_tokenizer_from_json(const std::filesystem::path& path, const nlohmann::json& j,
                                                        const TokenizerConfig& config) {
  if (!j.is_object()) throw_bad_key(path, "(top level)", "an object", j);
  BpeSpec spec;
  spec.source = path;
  const auto& model = j.contains("model") ? j["model"] : nlohmann::json();
  if (type_of(model) != "BPE")
    throw InputError(path.string() + ": key 'model.type': '" + type_of(model) + "' is not supported (supported: BPE)");
  if (model.contains("dropout") && !model["dropout"].is_null() && !model["dropout"].is_number())
    throw_bad_key(path, "model.dropout", "a number or null", model["dropout"]);
  if (model.contains("dropout") && !model["dropout"].is_null() && model["dropout"].get<double>() != 0.0)
    throw InputError(path.string() + ": key 'model.dropout': BPE dropout is not supported for encoding");
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"})
    if (model.contains(key) && model[key].is_string() && !model[key].get<std::string>().empty())
      throw InputError(path.string() + ": key 'model." + key + "': a non-empty value is not supported for byte-level BPE");
  if (get_flag(model, "byte_fallback", false, path, "model"))
    throw InputError(path.string() + ": key 'model.byte_fallback': byte fallback is a sentencepiece-style BPE feature, "
                                     "not supported together with a ByteLevel pre-tokenizer");
  read_vocab(model.contains("vocab") ? model["vocab"] : nlohmann::json(), path, "model.vocab", spec);
  const auto& merges = model.contains("merges") ? model["merges"] : nlohmann::json();
  if (!merges.is_array()) throw_bad_key(path, "model.merges", "an array", merges);
  spec.merges.reserve(merges.size());
  for (size_t i = 0; i < merges.size(); ++i) {
    const auto& m = merges[i];
    const std::string where = path.string() + ": key 'model.merges[" + std::to_string(i) + "]'";
    if (m.is_string()) {  // "left right" (tokenizers < 0.20)
      const std::string s = m.get<std::string>();
      const size_t sp = s.find(' ');
      if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos)
        throw_bad_key(path, "model.merges[" + std::to_string(i) + "]", "\"left right\"", m);
      spec.merges.push_back({s.substr(0, sp), s.substr(sp + 1), where});
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {  // ["left", "right"]
      spec.merges.push_back({m[0].get<std::string>(), m[1].get<std::string>(), where});
    } else {
      throw_bad_key(path, "model.merges[" + std::to_string(i) + "]", "\"left right\" or [\"left\", \"right\"]", m);
    }
  }
  spec.ignore_merges = get_flag(model, "ignore_merges", false, path, "model");
  if (model.contains("unk_token") && model["unk_token"].is_string()) spec.unk_token = model["unk_token"].get<std::string>();

  read_normalizer(j.contains("normalizer") ? j["normalizer"] : nlohmann::json(), path, "normalizer", spec);
  if (!is_byte_level_bpe(j))
    throw InputError(path.string() + ": key 'pre_tokenizer': no ByteLevel pre-tokenizer, so this is not a byte-level BPE "
                                     "tokenizer (a sentencepiece-style tokenizer.json needs tokenizer.model beside it)");
  read_pre_tokenizer(j["pre_tokenizer"], path, "pre_tokenizer", spec);

  // tokenizer.json's added_tokens first, then what tokenizer_config.json adds or overrides.
  TokenizerConfig merged = config;
  std::vector<AddedToken> from_json;
  if (j.contains("added_tokens") && !j["added_tokens"].is_null()) {
    const auto& a = j["added_tokens"];
    if (!a.is_array()) throw_bad_key(path, "added_tokens", "an array", a);
    for (size_t i = 0; i < a.size(); ++i) {
      const std::string where = "added_tokens[" + std::to_string(i) + "]";
      const auto& t = a[i];
      if (!t.is_object() || !t.contains("id") || !t["id"].is_number_integer() || !t.contains("content") ||
          !t["content"].is_string())
        throw_bad_key(path, where, "an object with an integer \"id\" and a string \"content\"", t);
      AddedToken tok;
      tok.id = token_id(t["id"], path, where + ".id");
      tok.content = t["content"].get<std::string>();
      tok.special = get_flag(t, "special", false, path, where);
      tok.lstrip = get_flag(t, "lstrip", false, path, where);
      tok.rstrip = get_flag(t, "rstrip", false, path, where);
      tok.single_word = get_flag(t, "single_word", false, path, where);
      from_json.push_back(std::move(tok));
    }
  }
  merged.added_tokens.insert(merged.added_tokens.begin(), from_json.begin(), from_json.end());
  const ResolvedTokens resolved = resolve_added_tokens(merged, RoleDefaults{}, [&](std::string_view t) -> std::optional<int32_t> {
    auto it = spec.vocab.find(std::string(t));
    return it == spec.vocab.end() ? std::nullopt : std::optional<int32_t>(it->second);
  });
  read_post_processor(j.contains("post_processor") ? j["post_processor"] : nlohmann::json(), path, "post_processor",
                      spec.prefix, spec.suffix);
  apply_config_post_processing(config, resolved, spec);
  return make_bpe_tokenizer(std::move(spec), resolved);
}

std::unique_ptr<Tokenizer> make_bpe_tokenizer_from_files(const std::filesystem::path& vocab_json,
                                                         const std::filesystem::path& merges_txt,
                                                         const TokenizerConfig& config) {
  BpeSpec spec;
  spec.source = vocab_json;
  read_vocab(read_json_file(vocab_json), vocab_json, "(top level)", spec);

  std::ifstream in(merges_txt, std::ios::binary);
  if (!in) throw InputError(merges_txt.string() + ": cannot open file");
  std::string line;
  for (size_t lineno = 1; std::getline(in, line); ++lineno) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (lineno == 1 && line.rfind("#version", 0) == 0) continue;
    if (line.empty()) continue;
    const size_t sp = line.find(' ');
    const std::string where = merges_txt.string() + ":" + std::to_string(lineno);
    if (sp == std::string::npos || sp == 0 || sp + 1 == line.size() || line.find(' ', sp + 1) != std::string::npos)
      throw InputError(where + ": expected two tokens separated by one space, found '" + line.substr(0, 80) + "'");
    spec.merges.push_back({line.substr(0, sp), line.substr(sp + 1), where});
  }

  // The policy of the tokenizer class named in tokenizer_config.json (transformers 5 classes).
  RoleDefaults defaults;
  const std::string& cls = config.tokenizer_class;
  if (cls == "Qwen2Tokenizer" || cls == "Qwen2TokenizerFast") {
    spec.splits.emplace_back(kQwen2Pattern, "Qwen2 pre-tokenizer");
    spec.nfc = true;
    defaults.unk = defaults.eos = defaults.pad = "<|endoftext|>";
  } else {
    // GPT2Tokenizer and its relatives: ByteLevel with the GPT-2 regex; <|endoftext|> plays every role.
    spec.splits.emplace_back(kGpt2Pattern, "GPT-2 pre-tokenizer");
    defaults.bos = defaults.eos = defaults.unk = "<|endoftext|>";
  }
  spec.add_prefix_space = config.add_prefix_space.value_or(false);
  const ResolvedTokens resolved = resolve_added_tokens(config, defaults, [&](std::string_view t) -> std::optional<int32_t> {
    auto it = spec.vocab.find(std::string(t));
    return it == spec.vocab.end() ? std::nullopt : std::optional<int32_t>(it->second);
  });
  apply_config_post_processing(config, resolved, spec);  // neither adds BOS unless add_bos_token says so
  return make_bpe_tokenizer(std::move(spec), resolved);
}

}  // namespace qtrain
