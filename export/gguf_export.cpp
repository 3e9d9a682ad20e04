// Model → GGUF mapping. The rules follow llama.cpp master as of 2026 (convert_hf_to_gguf.py with its
// conversion/ package and gguf-py 0.19; src/llama-quant.cpp for Q4_K_M); the Q4_K_M rules quoted below
// have been the same since the K-quant mixes were introduced (mid 2023), apart from the fallback table.
#include "export/gguf_export.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <fstream>
#include <map>
#include <optional>
#include <set>

#include <nlohmann/json.hpp>
#include <sentencepiece_processor.h>

#include "data/error.h"
#include "data/tokenizer/tokenizer_config.h"
#include "trainer/model/linear_modules.h"

namespace qtrain {
namespace gguf {
namespace {

using nlohmann::json;

// gguf-py's TokenType.
enum TokenType : int32_t { kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6 };

std::optional<json> json_if_exists(const std::filesystem::path& p) {
  if (!std::filesystem::is_regular_file(p)) return std::nullopt;
  return read_json_file(p);
}

// Lenient accessors for optional keys of tokenizer files: a missing key, a non-object parent or a value of
// another type reads as absent (nlohmann's value() throws on those).
const json& field(const json& j, const std::string& key) {
  static const json null;
  if (!j.is_object()) return null;
  const auto it = j.find(key);
  return it == j.end() ? null : *it;
}
bool flag(const json& j, const std::string& key, bool dflt) {
  const json& v = field(j, key);
  return v.is_boolean() ? v.get<bool>() : dflt;
}
std::string text(const json& j, const std::string& key) {
  const json& v = field(j, key);
  return v.is_string() ? v.get<std::string>() : std::string();
}

// convert_hf_to_gguf.py's does_token_look_special: added tokens that are control tokens in practice even
// when their files do not mark them special.
bool looks_special(const std::string& t) {
  auto starts = [&](std::string_view p) { return t.size() >= p.size() && t.compare(0, p.size(), p) == 0; };
  auto ends = [&](std::string_view s) { return t.size() >= s.size() && t.compare(t.size() - s.size(), s.size(), s) == 0; };
  if (t == "<pad>" || t == "<mask>" || t == "<2mass>" || t == "[@BOS@]") return true;
  if (starts("<|") && ends("|>")) return true;
  if (starts("<\xef\xbd\x9c") && ends("\xef\xbd\x9c>")) return true;  // <｜ ... ｜> (deepseek-coder)
  return starts("<unused") && ends(">");
}

// U+2581 (sentencepiece's space marker) → ' ': convert pre-normalizes user-defined added tokens so.
std::string unmark_spaces(std::string s) {
  const std::string mark = "\xe2\x96\x81";
  for (std::size_t p = s.find(mark); p != std::string::npos; p = s.find(mark, p + 1)) s.replace(p, mark.size(), " ");
  return s;
}

struct Vocab {
  std::string model;  // "llama" | "gpt2"
  std::string pre;    // tokenizer.ggml.pre
  std::vector<std::string> tokens;
  std::vector<float> scores;  // sentencepiece only
  std::vector<int32_t> types;
  std::vector<std::string> merges;  // BPE only
};

// _create_vocab_sentencepiece: every id below the model's vocab_size, padded with "[PAD<i>]" (score −10000,
// UNUSED); sentencepiece pieces with their scores and types; then added_tokens.json and
// tokenizer_config.json's added_tokens_decoder override their ids (score −1000; CONTROL when special or
// special-looking, else USER_DEFINED with ▁ turned into a space).
Vocab sentencepiece_vocab(const std::filesystem::path& dir, int64_t vocab_size) {
  const std::filesystem::path model_file = dir / "tokenizer.model";
  sentencepiece::SentencePieceProcessor sp;
  if (const auto st = sp.Load(model_file.string()); !st.ok()) {
    throw InputError(model_file.string() + ": not a sentencepiece model: " + st.ToString());
  }
  Vocab v;
  v.model = "llama";
  v.pre = "default";
  v.tokens.resize(vocab_size);
  v.scores.assign(vocab_size, -10000.0f);
  v.types.assign(vocab_size, kUnused);
  for (int64_t i = 0; i < vocab_size; ++i) v.tokens[i] = "[PAD" + std::to_string(i) + "]";
  for (int id = 0; id < sp.GetPieceSize() && id < vocab_size; ++id) {
    int32_t t = kNormal;
    if (sp.IsUnknown(id)) t = kUnknown;
    else if (sp.IsControl(id)) t = kControl;
    else if (sp.IsUnused(id)) t = kUnused;
    else if (sp.IsByte(id)) t = kByte;
    v.tokens[id] = sp.IdToPiece(id);
    v.scores[id] = sp.GetScore(id);
    v.types[id] = t;
  }
  if (auto added = json_if_exists(dir / "added_tokens.json")) {
    if (!added->is_object()) throw_bad_key(dir / "added_tokens.json", "(root)", "an object", *added);
    for (const auto& [text, id] : added->items()) {
      if (!id.is_number_integer()) throw_bad_key(dir / "added_tokens.json", text, "an integer id", id);
      const int64_t i = id.get<int64_t>();
      if (i < 0 || i >= vocab_size) continue;  // convert warns and ignores it
      v.tokens[i] = text;
      v.scores[i] = -1000.0f;
      v.types[i] = kUserDefined;
    }
  }
  if (auto tc = json_if_exists(dir / "tokenizer_config.json"); tc && tc->is_object()) {
    const auto dec = tc->find("added_tokens_decoder");
    if (dec != tc->end() && dec->is_object()) {
      for (const auto& [key, entry] : dec->items()) {
        int64_t i = -1;
        try {
          i = std::stoll(key);
        } catch (const std::exception&) {
          throw_bad_key(dir / "tokenizer_config.json", "added_tokens_decoder." + key, "an integer id as key", entry);
        }
        if (i < 0 || i >= vocab_size) continue;
        if (!entry.is_object() || !entry.contains("content") || !entry["content"].is_string()) {
          throw_bad_key(dir / "tokenizer_config.json", "added_tokens_decoder." + key, "an object with a content string", entry);
        }
        std::string content = entry["content"].get<std::string>();
        const bool special = flag(entry, "special", false);
        if (special || looks_special(content)) {
          v.types[i] = kControl;
        } else {
          content = unmark_spaces(content);
          v.types[i] = kUserDefined;
        }
        v.scores[i] = -1000.0f;
        v.tokens[i] = content;
      }
    }
  }
  return v;
}

// tokenizer.ggml.pre for a byte-level BPE tokenizer. convert_hf_to_gguf.py hashes the token ids of a
// fixed test string; we recognise the pre-tokenizer from tokenizer.json instead, for the families this
// exporter writes (Llama 3's regex → "llama-bpe"; a plain GPT-2 ByteLevel pre-tokenizer → "gpt-2").
std::string bpe_pre(const std::optional<json>& tj, const std::filesystem::path& dir) {
  if (!tj) return "gpt-2";  // vocab.json + merges.txt: a GPT-2 tokenizer
  const json pre = tj->value("pre_tokenizer", json());
  const std::string dumped = pre.dump();
  // The Llama 3 split pattern starts so (its letters-and-numbers classes follow).
  if (dumped.find(R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3})") != std::string::npos) {
    return "llama-bpe";
  }
  if (text(pre, "type") == "ByteLevel" && flag(pre, "use_regex", true)) return "gpt-2";
  throw InputError((dir / "tokenizer.json").string() +
                   ": pre_tokenizer not recognised for GGUF (known: Llama 3's split regex → llama-bpe, "
                   "GPT-2 ByteLevel → gpt-2)");
}

// get_vocab_base: ids 0..vocab_size−1 from the BPE vocabulary and the added tokens; ids in neither are
// "[PAD<i>]" UNUSED; added tokens are CONTROL when special or special-looking, else USER_DEFINED.
Vocab bpe_vocab(const std::filesystem::path& dir, int64_t vocab_size) {
  const std::optional<json> tj = json_if_exists(dir / "tokenizer.json");
  if (tj && !tj->is_object()) throw_bad_key(dir / "tokenizer.json", "(root)", "an object", *tj);
  std::map<int64_t, std::string> by_id;
  std::map<int64_t, bool> added_special;  // id → special flag of an added token
  const std::filesystem::path src = tj ? dir / "tokenizer.json" : dir / "vocab.json";
  json vocab;
  if (tj) {
    const json model = tj->value("model", json());
    if (!model.is_object() || !model.contains("vocab") || !model["vocab"].is_object()) {
      throw_bad_key(src, "model.vocab", "an object token → id", model);
    }
    vocab = model["vocab"];
    for (const json& a : tj->value("added_tokens", json::array())) {
      if (!a.contains("id") || !a.contains("content")) throw_bad_key(src, "added_tokens", "entries with id and content", a);
      by_id[a["id"].get<int64_t>()] = a["content"].get<std::string>();
      added_special[a["id"].get<int64_t>()] = flag(a, "special", false);
    }
  } else {
    vocab = read_json_file(src);
    if (!vocab.is_object()) throw_bad_key(src, "(root)", "an object token → id", vocab);
    if (auto tc = json_if_exists(dir / "tokenizer_config.json"); tc && tc->contains("added_tokens_decoder")) {
      for (const auto& [key, entry] : (*tc)["added_tokens_decoder"].items()) {
        by_id[std::stoll(key)] = text(entry, "content");
        added_special[std::stoll(key)] = flag(entry, "special", false);
      }
    }
  }
  for (const auto& [text, id] : vocab.items()) {
    if (!id.is_number_integer()) throw_bad_key(src, text, "an integer id", id);
    const int64_t i = id.get<int64_t>();
    if (!by_id.count(i)) by_id[i] = text;
  }
  if (!by_id.empty() && by_id.rbegin()->first >= vocab_size) {
    throw InputError(src.string() + ": token id " + std::to_string(by_id.rbegin()->first) +
                     " is not below the model's vocab_size " + std::to_string(vocab_size));
  }
  Vocab v;
  v.model = "gpt2";
  v.pre = bpe_pre(tj, dir);
  for (int64_t i = 0; i < vocab_size; ++i) {
    const auto it = by_id.find(i);
    if (it == by_id.end()) {
      v.tokens.push_back("[PAD" + std::to_string(i) + "]");
      v.types.push_back(kUnused);
    } else if (const auto a = added_special.find(i); a != added_special.end()) {
      if (a->second || looks_special(it->second)) {
        v.tokens.push_back(it->second);
        v.types.push_back(kControl);
      } else {
        v.tokens.push_back(unmark_spaces(it->second));
        v.types.push_back(kUserDefined);
      }
    } else {
      v.tokens.push_back(it->second);
      v.types.push_back(kNormal);
    }
  }
  // Merges (SpecialVocab with load_merges): tokenizer.json's, as "a b" (a space inside a part written as
  // U+0120, as gguf-py encodes pairs), else merges.txt without its "#version" line.
  if (tj && (*tj)["model"].contains("merges")) {
    for (const json& m : (*tj)["model"]["merges"]) {
      if (m.is_string()) {
        v.merges.push_back(m.get<std::string>());
      } else if (m.is_array() && m.size() == 2) {
        std::string joined;
        for (int k = 0; k < 2; ++k) {
          std::string part = m[k].get<std::string>();
          std::string enc;
          for (char c : part) enc += (c == ' ') ? std::string("\xc4\xa0") : std::string(1, c);
          joined += (k ? " " : "") + enc;
        }
        v.merges.push_back(joined);
      } else {
        throw_bad_key(src, "model.merges", "strings or pairs of strings", m);
      }
    }
  } else if (std::ifstream mf(dir / "merges.txt"); mf) {
    std::string line;
    bool first = true;
    while (std::getline(mf, line)) {
      while (!line.empty() && std::isspace(static_cast<unsigned char>(line.back()))) line.pop_back();
      std::size_t b = 0;
      while (b < line.size() && std::isspace(static_cast<unsigned char>(line[b]))) ++b;
      line = line.substr(b);
      if (first && line.rfind("#", 0) == 0) { first = false; continue; }
      first = false;
      if (line.empty()) continue;
      const std::size_t sp = line.find_first_of(" \t");
      if (sp == std::string::npos) continue;
      const std::string a = line.substr(0, sp);
      std::string rest = line.substr(sp);
      rest.erase(0, rest.find_first_not_of(" \t"));
      if (rest.empty() || rest.find_first_of(" \t") != std::string::npos) continue;  // convert ignores it
      v.merges.push_back(a + " " + rest);
    }
  }
  return v;
}

// gguf-py's SpecialVocab: special token ids (tokenizer_config.json's bos/eos/... token text looked up in
// tokenizer.json's added tokens, then config.json's *_token_id for the roles still unset), add_bos/eos/sep
// flags (TemplateProcessing of tokenizer.json's post_processor, then tokenizer_config.json's add_*_token),
// and the chat template (tokenizer_config.json, else chat_template.jinja, else chat_template.json).
void special_vocab(const std::filesystem::path& dir, std::optional<int64_t> n_vocab, std::vector<KeyValue>& out) {
  static const std::vector<std::string> kRoles = {"bos", "eos", "unk", "sep", "pad", "cls", "mask"};
  std::vector<std::pair<std::string, int64_t>> ids;
  std::vector<std::pair<std::string, bool>> adds;
  auto set_id = [&](const std::string& role, int64_t id) {
    if (id < 0) throw InputError(dir.string() + ": negative id for the " + role + " token");
    if (n_vocab && id >= *n_vocab) return;
    for (const auto& p : ids) if (p.first == role) return;
    ids.emplace_back(role, id);
  };
  auto set_add = [&](const std::string& role, bool v) {
    for (auto& p : adds) if (p.first == role) { p.second = v; return; }
    adds.emplace_back(role, v);
  };
  std::optional<json> tj = json_if_exists(dir / "tokenizer.json");
  if (tj && !tj->is_object()) tj.reset();
  std::optional<json> tc = json_if_exists(dir / "tokenizer_config.json");
  if (tc && !tc->is_object()) tc.reset();
  std::map<std::string, std::string> text_override;  // a TemplateProcessing trailing token replaces the eos text
  auto token_text = [&](const std::string& role) -> std::optional<std::string> {
    if (auto o = text_override.find(role); o != text_override.end()) return o->second;
    if (!tc) return std::nullopt;
    const json e = tc->value(role + "_token", json());
    if (e.is_string()) return e.get<std::string>();
    if (e.is_object() && e.contains("content") && e["content"].is_string()) return e["content"].get<std::string>();
    return std::nullopt;
  };
  if (tj) {
    // TemplateProcessing: a leading special token that is the bos (or cls) means add_bos; a trailing one
    // that is the eos means add_eos.
    const json pp = tj->value("post_processor", json());
    std::vector<json> procs;
    if (pp.is_object()) {
      if (pp.contains("processors") && pp["processors"].is_array()) for (const json& p : pp["processors"]) procs.push_back(p);
      else procs.push_back(pp);
    }
    const auto bos = token_text("bos"), cls = token_text("cls"), eos = token_text("eos");
    for (const json& p : procs) {
      if (text(p, "type") != "TemplateProcessing") continue;
      const json& single = field(p, "single");
      if (!single.is_array()) continue;
      if (single.size() <= 1) continue;
      const json& first = field(field(single.front(), "SpecialToken"), "id");
      if (first.is_string() && !first.get<std::string>().empty()) {
        const std::string f = first.get<std::string>();
        set_add("bos", (bos && f == *bos) || (cls && f == *cls) || (!tc));
      }
      // A trailing special token: add_eos, and (gguf-py) it becomes the eos token when it is not the
      // configured one (gguf-py then also records the old eos as eot; not written here).
      const json& last = field(field(single.back(), "SpecialToken"), "id");
      if (last.is_string() && !last.get<std::string>().empty()) {
        if (tc && (!eos || last.get<std::string>() != *eos)) text_override["eos"] = last.get<std::string>();
        set_add("eos", true);
      }
    }
  }
  std::optional<json> template_value;
  if (tc) {
    if (tc->contains("chat_template")) template_value = (*tc)["chat_template"];
    if (!template_value || template_value->is_null()) {
      if (std::ifstream jf(dir / "chat_template.jinja"); jf) {
        template_value = std::string((std::istreambuf_iterator<char>(jf)), std::istreambuf_iterator<char>());
      } else if (auto cj = json_if_exists(dir / "chat_template.json"); cj && cj->contains("chat_template")) {
        template_value = (*cj)["chat_template"];
      }
    }
    for (const std::string& role : kRoles) {
      const json a = tc->value("add_" + role + "_token", json());
      if (a.is_boolean()) set_add(role, a.get<bool>());
      const auto wanted = token_text(role);
      if (!wanted || !tj) continue;
      const json& added = field(*tj, "added_tokens");
      if (!added.is_array()) continue;
      for (const json& at : added) {
        if (text(at, "content") == *wanted && field(at, "id").is_number_integer()) {
          set_id(role, at["id"].get<int64_t>());
          break;
        }
      }
    }
  }
  if (auto cfg = json_if_exists(dir / "config.json"); cfg && cfg->is_object()) {
    for (const std::string& role : kRoles) {
      const json id = cfg->value(role + "_token_id", json());
      if (id.is_number_integer()) set_id(role, id.get<int64_t>());  // a list (several eos) is not an int: skipped
    }
  }
  // gguf-py has writers for these ids (none for cls) and these add_* flags (bos, eos, sep).
  static const std::map<std::string, std::string> kIdKeys = {
      {"bos", "tokenizer.ggml.bos_token_id"},     {"eos", "tokenizer.ggml.eos_token_id"},
      {"unk", "tokenizer.ggml.unknown_token_id"}, {"sep", "tokenizer.ggml.seperator_token_id"},
      {"pad", "tokenizer.ggml.padding_token_id"}, {"mask", "tokenizer.ggml.mask_token_id"}};
  for (const auto& [role, id] : ids) {
    if (auto k = kIdKeys.find(role); k != kIdKeys.end()) out.push_back({k->second, Value::u32(static_cast<uint32_t>(id))});
  }
  for (const auto& [role, v] : adds) {
    if (role == "bos" || role == "eos" || role == "sep") out.push_back({"tokenizer.ggml.add_" + role + "_token", Value::boolean(v)});
  }
  if (template_value && template_value->is_string()) {
    out.push_back({"tokenizer.chat_template", Value::string(template_value->get<std::string>())});
  } else if (template_value && template_value->is_array()) {
    // Named templates: "default" → tokenizer.chat_template, the others → tokenizer.chat_template.<name>.
    std::vector<std::string> names;
    std::optional<std::string> def;
    for (const json& c : *template_value) {
      std::string name = text(c, "name");
      for (char& ch : name) if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
      if (name.empty() || !c.contains("template") || !c["template"].is_string()) continue;
      if (name == "default") def = c["template"].get<std::string>();
      else { names.push_back(name); out.push_back({"tokenizer.chat_template." + name, Value::string(c["template"].get<std::string>())}); }
    }
    if (!names.empty()) out.push_back({"tokenizer.chat_templates", Value::strings(names)});
    if (def) out.push_back({"tokenizer.chat_template", Value::string(*def)});
  }
}

// llama_tensor_get_type's use_more_bits: the first and last eighth of the layers and every third layer
// in between get the larger type in the *_M mixes.
bool use_more_bits(int64_t i, int64_t n) { return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2; }

// tensor_type_fallback: a row length that is not a multiple of the type's block. Q4_K → Q5_0,
// Q5_K → Q5_1, Q6_K → Q8_0 (all 32-element blocks); still not a multiple (of 32) → F16. (A Q8_0 target
// with such rows — an output tensor of a model whose hidden size is not a multiple of 32 — has no
// fallback in llama.cpp, which aborts; we write F16, as convert_hf_to_gguf.py does for Q8_0.)
GgmlType fallback(GgmlType t, int64_t ne0) {
  if (ne0 % block_elements(t) == 0) return t;
  GgmlType r = t;
  switch (t) {
    case GgmlType::kQ4_K: r = GgmlType::kQ5_0; break;
    case GgmlType::kQ5_K: r = GgmlType::kQ5_1; break;
    case GgmlType::kQ6_K: r = GgmlType::kQ8_0; break;
    default: r = t; break;
  }
  return ne0 % block_elements(r) == 0 ? r : GgmlType::kF16;
}

bool ends_with(const std::string& s, std::string_view suf) {
  return s.size() >= suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0;
}

int64_t layer_of(const std::string& name) {
  if (name.rfind("blk.", 0) != 0) return -1;
  return std::stoll(name.substr(4, name.find('.', 4) - 4));
}

}  // namespace

std::vector<GgmlType> choose_types(GgufType type, const std::vector<TensorShape>& tensors, int64_t n_layer,
                                   int64_t n_head, int64_t n_head_kv) {
  bool has_output = false;
  int64_t n_attn_v = 0;
  for (const TensorShape& t : tensors) {
    if (t.name == "output.weight") has_output = true;
    if (t.name.find("attn_v.weight") != std::string::npos) ++n_attn_v;
  }
  // llama.cpp's LLM_TYPE_70B for the llama architecture: 80 layers with grouped-query attention.
  const bool is_70b = n_layer == 80 && n_head != n_head_kv;
  std::vector<GgmlType> out;
  for (const TensorShape& t : tensors) {
    const int64_t ne0 = t.ne.at(0);
    // Both tools keep 1-D tensors (norms, biases, rope_freqs) and *_norm.weight in F32.
    if (t.ne.size() < 2 || ends_with(t.name, "_norm.weight") || !ends_with(t.name, ".weight")) {
      out.push_back(GgmlType::kF32);
      continue;
    }
    if (type == GgufType::kF16) {
      out.push_back(GgmlType::kF16);
      continue;
    }
    if (type == GgufType::kQ8_0) {
      // convert_hf_to_gguf.py: gguf.quants.quantize(Q8_0) raises QuantError for a row that is not a
      // multiple of 32, and the tensor falls back to F16.
      out.push_back(ne0 % 32 == 0 ? GgmlType::kQ8_0 : GgmlType::kF16);
      continue;
    }
    // LLAMA_FTYPE_MOSTLY_Q4_K_M, llama_tensor_get_type_impl (no imatrix, no overrides, not pure):
    //  - output.weight, and token_embd.weight when the model has no output.weight (tied embeddings):
    //    Q8_0 if ne0 is not a multiple of 256, else Q6_K;
    //  - attn_v.weight: Q6_K for use_more_bits(i_attention_wv, n_attention_wv) (the counter runs over the
    //    attn_v tensors in layer order, so it is the layer index); for LLM_TYPE_70B a remaining Q4_K
    //    becomes Q5_K;
    //  - ffn_down.weight: Q6_K for use_more_bits(layer, n_layer);
    //  - everything else (attn_q/k/output, ffn_gate/up, an untied token_embd): the default Q4_K;
    //  then tensor_type_fallback for rows that do not fill whole blocks.
    GgmlType g = GgmlType::kQ4_K;
    const bool output_like = t.name == "output.weight" || (!has_output && t.name == "token_embd.weight");
    const int64_t layer = layer_of(t.name);
    if (output_like) {
      g = ne0 % 256 != 0 ? GgmlType::kQ8_0 : GgmlType::kQ6_K;
    } else if (t.name.find("attn_v.weight") != std::string::npos) {
      if (use_more_bits(layer, n_attn_v)) g = GgmlType::kQ6_K;
      if (is_70b && g == GgmlType::kQ4_K) g = GgmlType::kQ5_K;
    } else if (t.name.find("ffn_down") != std::string::npos) {
      if (use_more_bits(layer, n_layer)) g = GgmlType::kQ6_K;
    }
    out.push_back(fallback(g, ne0));
  }
  return out;
}

at::Tensor permute_qk(const at::Tensor& w, int64_t n_head) {
  // [n_head, 2, head_dim/2, ...] → swap the pair index and the position within the half.
  std::vector<int64_t> shape = {n_head, 2, w.size(0) / n_head / 2};
  for (int64_t d = 1; d < w.dim(); ++d) shape.push_back(w.size(d));
  return w.reshape(shape).transpose(1, 2).reshape(w.sizes()).contiguous();
}

at::Tensor unpermute_qk(const at::Tensor& w, int64_t n_head) {
  std::vector<int64_t> shape = {n_head, w.size(0) / n_head / 2, 2};
  for (int64_t d = 1; d < w.dim(); ++d) shape.push_back(w.size(d));
  return w.reshape(shape).transpose(1, 2).reshape(w.sizes()).contiguous();
}

std::vector<KeyValue> tokenizer_metadata(const std::filesystem::path& dir, int64_t vocab_size) {
  const bool sentencepiece = std::filesystem::is_regular_file(dir / "tokenizer.model");
  const bool bpe = std::filesystem::is_regular_file(dir / "tokenizer.json") ||
                   (std::filesystem::is_regular_file(dir / "vocab.json") && std::filesystem::is_regular_file(dir / "merges.txt"));
  if (!sentencepiece && !bpe) {
    throw InputError(dir.string() + ": no tokenizer for GGUF (expected tokenizer.model, tokenizer.json, or vocab.json + merges.txt)");
  }
  Vocab v = sentencepiece ? sentencepiece_vocab(dir, vocab_size) : bpe_vocab(dir, vocab_size);
  std::vector<KeyValue> out;
  if (auto tc = json_if_exists(dir / "tokenizer_config.json"); tc && tc->is_object()) {
    const json aps = tc->value("add_prefix_space", json());
    if (aps.is_boolean()) out.push_back({"tokenizer.ggml.add_space_prefix", Value::boolean(aps.get<bool>())});
  }
  out.push_back({"tokenizer.ggml.model", Value::string(v.model)});
  out.push_back({"tokenizer.ggml.pre", Value::string(v.pre)});
  const int64_t n = static_cast<int64_t>(v.tokens.size());
  out.push_back({"tokenizer.ggml.tokens", Value::strings(std::move(v.tokens))});
  if (sentencepiece) out.push_back({"tokenizer.ggml.scores", Value::f32s(v.scores)});
  out.push_back({"tokenizer.ggml.token_type", Value::i32s(v.types)});
  if (!v.merges.empty()) out.push_back({"tokenizer.ggml.merges", Value::strings(std::move(v.merges))});
  special_vocab(dir, sentencepiece ? std::optional<int64_t>(n) : std::nullopt, out);
  return out;
}

}  // namespace gguf

GgufType parse_gguf_type(const std::string& s) {
  std::string l = s;
  for (char& c : l) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (l == "f16") return GgufType::kF16;
  if (l == "q8_0") return GgufType::kQ8_0;
  if (l == "q4_k_m") return GgufType::kQ4_K_M;
  throw UsageError("--gguf-type: unknown type '" + s + "' (expected f16, q8_0 or q4_k_m)");
}

std::string gguf_type_name(GgufType t) {
  switch (t) {
    case GgufType::kF16: return "f16";
    case GgufType::kQ8_0: return "q8_0";
    case GgufType::kQ4_K_M: return "q4_k_m";
  }
  return "?";
}

namespace {

// llama_ftype values (llama.h), written as general.file_type.
uint32_t file_type(GgufType t) {
  switch (t) {
    case GgufType::kF16: return 1;
    case GgufType::kQ8_0: return 7;
    case GgufType::kQ4_K_M: return 15;
  }
  return 0;
}

// convert_hf_to_gguf.py's LlamaModel.generate_extra_tensors for rope_type llama3: the per-frequency
// divisors llama.cpp applies (rope_freqs.weight, [head_dim/2] f32), computed in float32 as there.
std::vector<float> llama3_rope_factors(const ModelConfig& c) {
  const RopeConfig& r = c.rope;
  const double old_ctx = static_cast<double>(r.original_max_position_embeddings);
  const double low_wavelen = old_ctx / r.low_freq_factor, high_wavelen = old_ctx / r.high_freq_factor;
  std::vector<float> out;
  for (int64_t i = 0; i < c.head_dim; i += 2) {
    const float freq = 1.0f / std::pow(static_cast<float>(r.theta), static_cast<float>(i) / static_cast<float>(c.head_dim));
    const float wavelen = static_cast<float>(2 * M_PI) / freq;
    if (wavelen < high_wavelen) {
      out.push_back(1.0f);
    } else if (wavelen > low_wavelen) {
      out.push_back(static_cast<float>(r.factor));
    } else {
      const float smooth = (static_cast<float>(old_ctx) / wavelen - static_cast<float>(r.low_freq_factor)) /
                           static_cast<float>(r.high_freq_factor - r.low_freq_factor);
      out.push_back(1.0f / ((1.0f - smooth) / static_cast<float>(r.factor) + smooth));
    }
  }
  return out;
}

}  // namespace

GgufResult write_gguf(const std::filesystem::path& file, const LlamaModel& merged,
                      const std::filesystem::path& model_dir, GgufType type, const ConsoleOptions& console) {
  const ModelConfig& c = merged.config();
  if (c.family == ModelFamily::kQwen2 || c.family == ModelFamily::kQwen3 || c.qk_norm || c.qkv_bias) {
    throw UsageError("GGUF export writes the llama architecture (Llama, Mistral); " + std::string(family_name(c.family)) +
                     " needs llama.cpp's own architecture for it, not supported");
  }
  merged.for_each_linear([](const std::string& name, const Linear& l) {
    if (l.qweight) throw UsageError("GGUF export needs the merged dense model: " + name + " is still 4-bit");
  });
  std::map<std::string, at::Tensor> st = merged.state_tensors();
  auto take = [&](const std::string& hf) -> at::Tensor {
    auto it = st.find(hf);
    if (it == st.end()) throw std::logic_error("merged model has no tensor " + hf);
    return it->second;
  };

  // Tensors in llama.cpp's names; each source is converted to float32 on the CPU when written.
  struct Source {
    std::string name;
    std::function<at::Tensor()> get;  // float32, HF layout after the Q/K permutation
    std::vector<int64_t> shape;       // PyTorch shape
  };
  std::vector<Source> srcs;
  auto add = [&](std::string name, at::Tensor t, std::function<at::Tensor(at::Tensor)> f = {}) {
    std::vector<int64_t> shape = t.sizes().vec();
    srcs.push_back({std::move(name), [t, f]() {
                      at::Tensor x = t.to(at::kCPU, at::kFloat);
                      return f ? f(x) : x;
                    },
                    std::move(shape)});
  };
  add("token_embd.weight", take("model.embed_tokens.weight"));
  add("output_norm.weight", take("model.norm.weight"));
  if (!c.tie_word_embeddings) add("output.weight", take("lm_head.weight"));
  std::vector<float> rope_factors;
  if (c.rope.type == RopeType::kLlama3) {
    rope_factors = llama3_rope_factors(c);
    srcs.push_back({"rope_freqs.weight", [rope_factors]() {
                      return at::tensor(rope_factors, at::kFloat);
                    },
                    {static_cast<int64_t>(rope_factors.size())}});
  }
  static const std::map<std::string, std::string> kLinearNames = {
      {"q_proj", "attn_q"}, {"k_proj", "attn_k"}, {"v_proj", "attn_v"}, {"o_proj", "attn_output"},
      {"gate_proj", "ffn_gate"}, {"up_proj", "ffn_up"}, {"down_proj", "ffn_down"}};
  const int64_t nh = c.num_attention_heads, nkv = c.num_key_value_heads;
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const std::string hf = "model.layers." + std::to_string(i) + ".";
    const std::string g = "blk." + std::to_string(i) + ".";
    add(g + "attn_norm.weight", take(hf + "input_layernorm.weight"));
    add(g + "ffn_norm.weight", take(hf + "post_attention_layernorm.weight"));
    for (const LinearModule& m : kLinearModules) {
      const std::string base = hf + std::string(m.path);
      const std::string out = g + kLinearNames.at(std::string(m.name));
      std::function<at::Tensor(at::Tensor)> perm;
      if (m.name == "q_proj") perm = [nh](at::Tensor x) { return gguf::permute_qk(x, nh); };
      if (m.name == "k_proj") perm = [nkv](at::Tensor x) { return gguf::permute_qk(x, nkv); };
      add(out + ".weight", take(base + ".weight"), perm);
      if (st.count(base + ".bias")) add(out + ".bias", take(base + ".bias"), perm);
    }
  }
  // llama-quantize's order (llama_model_loader's weight_name_comparer): tensors outside the blocks first,
  // then block by block, by name within each.
  std::stable_sort(srcs.begin(), srcs.end(), [](const Source& a, const Source& b) {
    const int64_t la = gguf::layer_of(a.name), lb = gguf::layer_of(b.name);
    return la != lb ? la < lb : a.name < b.name;
  });

  std::vector<gguf::TensorShape> shapes;
  for (const Source& s : srcs) shapes.push_back({s.name, std::vector<int64_t>(s.shape.rbegin(), s.shape.rend())});
  const std::vector<gguf::GgmlType> types = gguf::choose_types(type, shapes, c.num_hidden_layers, nh, nkv);

  gguf::Writer w;
  const std::string arch = "llama";
  w.add("general.architecture", gguf::Value::string(arch));
  w.add("general.type", gguf::Value::string("model"));
  w.add("general.name", gguf::Value::string(model_dir.filename().empty() ? model_dir.parent_path().filename().string()
                                                                         : model_dir.filename().string()));
  w.add("general.alignment", gguf::Value::u32(gguf::kAlignment));
  w.add(arch + ".block_count", gguf::Value::u32(static_cast<uint32_t>(c.num_hidden_layers)));
  w.add(arch + ".context_length", gguf::Value::u32(static_cast<uint32_t>(c.max_position_embeddings)));
  w.add(arch + ".embedding_length", gguf::Value::u32(static_cast<uint32_t>(c.hidden_size)));
  w.add(arch + ".feed_forward_length", gguf::Value::u32(static_cast<uint32_t>(c.intermediate_size)));
  w.add(arch + ".attention.head_count", gguf::Value::u32(static_cast<uint32_t>(nh)));
  w.add(arch + ".attention.head_count_kv", gguf::Value::u32(static_cast<uint32_t>(nkv)));
  if (c.rope.type == RopeType::kLinear) {
    w.add(arch + ".rope.scaling.type", gguf::Value::string("linear"));
    w.add(arch + ".rope.scaling.factor", gguf::Value::f32(static_cast<float>(c.rope.factor)));
  }
  w.add(arch + ".rope.freq_base", gguf::Value::f32(static_cast<float>(c.rope.theta)));
  w.add(arch + ".attention.layer_norm_rms_epsilon", gguf::Value::f32(static_cast<float>(c.rms_norm_eps)));
  // convert writes key/value lengths when config.json names head_dim; llama.cpp otherwise derives
  // hidden/heads, so they are needed whenever head_dim differs from that.
  bool explicit_head_dim = c.head_dim * nh != c.hidden_size;
  if (auto cfg = gguf::json_if_exists(model_dir / "config.json"); cfg && cfg->is_object() && cfg->contains("head_dim") &&
                                                                  (*cfg)["head_dim"].is_number_integer()) {
    explicit_head_dim = true;
  }
  if (explicit_head_dim) {
    w.add(arch + ".attention.key_length", gguf::Value::u32(static_cast<uint32_t>(c.head_dim)));
    w.add(arch + ".attention.value_length", gguf::Value::u32(static_cast<uint32_t>(c.head_dim)));
  }
  w.add("general.file_type", gguf::Value::u32(file_type(type)));
  w.add(arch + ".vocab_size", gguf::Value::u32(static_cast<uint32_t>(c.vocab_size)));
  w.add(arch + ".rope.dimension_count", gguf::Value::u32(static_cast<uint32_t>(c.head_dim)));
  for (gguf::KeyValue& kv : gguf::tokenizer_metadata(model_dir, c.vocab_size)) w.add(std::move(kv.key), std::move(kv.value));
  w.add("general.quantization_version", gguf::Value::u32(2));  // GGML_QNT_VERSION

  GgufResult result;
  for (std::size_t k = 0; k < srcs.size(); ++k) {
    const gguf::GgmlType gt = types[k];
    const std::vector<int64_t> ne = shapes[k].ne;
    auto get = srcs[k].get;
    const std::string name = srcs[k].name;
    w.add_tensor({name, ne, gt, [get, gt, ne]() {
                    at::Tensor x = get().contiguous();
                    const int64_t cols = ne[0];
                    const int64_t rows = x.numel() / cols;
                    return gguf::quantize_rows(gt, x.data_ptr<float>(), rows, cols);
                  }});
    result.tensor_types.emplace_back(name, std::string(gguf::ggml_type_name(gt)));
  }
  result.bytes = w.write(file, console);
  return result;
}

}  // namespace qtrain
