// Sentencepiece through the library, with the Hugging Face LlamaTokenizer policy:
//   - added / special tokens are cut out of the text first and the pieces between them encoded;
//   - the dummy prefix ("▁" before the text) is ours, not the library's: with legacy (the
//     sentencepiece and transformers-4 behaviour) every piece between added tokens gets one; with
//     legacy=false only the piece at the start of the text does ("<s>Hi" -> <s>, "Hi", not "▁Hi");
//   - whitespace is never collapsed (HF ignores remove_extra_whitespaces; so do we, see below);
//   - decode is HF's decoder chain: "▁" -> " ", <0xNN> byte pieces -> bytes, one leading space
//     dropped when a prefix space is added on encode.
// To own the prefix and whitespace rules, the model proto is loaded with its normalizer's
// add_dummy_prefix and remove_extra_whitespaces switched off (patched in the serialized bytes: the
// Debian library ships no generated proto classes).
//
// Known divergence: transformers >= 5 (and the non-legacy fast tokenizer of 4.x) uses a Metaspace
// pre-tokenizer that skips the "▁" prefix when the text already starts with a space, so " Hello"
// gives [15043] there and [29871, 15043] here. We follow sentencepiece, llama.cpp's test vectors
// and what Llama was trained on.
#include "data/tokenizer/sentencepiece_tokenizer.h"

#include <sentencepiece_processor.h>

#include <fstream>
#include <sstream>

#include "data/error.h"
#include "data/tokenizer/utf8.h"

namespace qtrain {
namespace {

// ---- minimal protobuf wire format: enough to rewrite two booleans of ModelProto.normalizer_spec ----

struct WireReader {
  std::string_view buf;
  size_t pos = 0;
  const std::filesystem::path& file;

  bool done() const { return pos >= buf.size(); }
  [[noreturn]] void fail() const {
    throw InputError(file.string() + ": not a sentencepiece model (malformed protobuf at byte " + std::to_string(pos) + ")");
  }
  uint64_t varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (pos >= buf.size()) fail();
      const auto b = static_cast<unsigned char>(buf[pos++]);
      v |= static_cast<uint64_t>(b & 0x7F) << shift;
      if (!(b & 0x80)) return v;
    }
    fail();
  }
  // Skips the value of a field of the given wire type; returns the payload of a length-delimited one.
  std::string_view skip(uint32_t wire) {
    size_t n = 0;
    switch (wire) {
      case 0: varint(); return {};
      case 1: n = 8; break;
      case 2: n = varint(); break;
      case 5: n = 4; break;
      default: fail();  // groups (3/4) never occur in sentencepiece models
    }
    if (n > buf.size() - pos) fail();
    const auto payload = buf.substr(pos, n);
    pos += n;
    return payload;
  }
};

void put_varint(std::string& out, uint64_t v) {
  while (v >= 0x80) out += static_cast<char>((v & 0x7F) | 0x80), v >>= 7;
  out += static_cast<char>(v);
}

struct NormalizerFlags {
  bool add_dummy_prefix = true;           // proto defaults
  bool remove_extra_whitespaces = true;
};

// ModelProto field 3 = NormalizerSpec; in it, 3 = add_dummy_prefix, 4 = remove_extra_whitespaces.
std::string patch_normalizer(std::string_view model, NormalizerFlags& original, const std::filesystem::path& file) {
  constexpr uint32_t kNormalizerSpec = 3, kAddDummyPrefix = 3, kRemoveExtraWhitespaces = 4;
  std::string out;
  out.reserve(model.size() + 8);
  std::string spec;  // the rewritten NormalizerSpec payload
  bool seen_spec = false;
  WireReader top{model, 0, file};
  while (!top.done()) {
    const size_t begin = top.pos;
    const uint64_t key = top.varint();
    const uint32_t number = key >> 3, wire = key & 7;
    const std::string_view payload = top.skip(wire);
    if (number != kNormalizerSpec || wire != 2) {
      out.append(model.substr(begin, top.pos - begin));
      continue;
    }
    seen_spec = true;
    WireReader inner{payload, 0, file};
    while (!inner.done()) {
      const size_t fbegin = inner.pos;
      const uint64_t fkey = inner.varint();
      const uint32_t fnum = fkey >> 3, fwire = fkey & 7;
      const size_t vbegin = inner.pos;
      inner.skip(fwire);
      if (fwire == 0 && (fnum == kAddDummyPrefix || fnum == kRemoveExtraWhitespaces)) {
        WireReader v{payload, vbegin, file};
        (fnum == kAddDummyPrefix ? original.add_dummy_prefix : original.remove_extra_whitespaces) = v.varint() != 0;
        continue;  // dropped; written below as false
      }
      spec.append(payload.substr(fbegin, inner.pos - fbegin));
    }
  }
  if (!seen_spec) throw InputError(file.string() + ": not a sentencepiece model (no normalizer_spec)");
  for (uint32_t f : {kAddDummyPrefix, kRemoveExtraWhitespaces}) {
    put_varint(spec, (f << 3) | 0);
    put_varint(spec, 0);
  }
  put_varint(out, (kNormalizerSpec << 3) | 2);
  put_varint(out, spec.size());
  out += spec;
  return out;
}

class SentencePieceTokenizer final : public Tokenizer {
 public:
  SentencePieceTokenizer(const std::filesystem::path& file, const TokenizerConfig& config) : file_(file) {
    std::ifstream in(file, std::ios::binary);
    if (!in) throw InputError(file.string() + ": cannot open file");
    std::ostringstream ss;
    ss << in.rdbuf();
    NormalizerFlags flags;
    const std::string patched = patch_normalizer(ss.str(), flags, file);
    if (const auto st = sp_.LoadFromSerializedProto(patched); !st.ok())
      throw InputError(file.string() + ": not a sentencepiece model (" + st.ToString() + ")");

    // tokenizer_config.json wins; the model's own add_dummy_prefix is the fallback (as HF converts it).
    add_prefix_ = config.add_prefix_space.value_or(flags.add_dummy_prefix);
    // transformers 5 defaults legacy to false; configs written by 4.x usually say it explicitly.
    legacy_ = config.legacy.value_or(false);
    // Llama's BOS: add_bos_token defaults to true for sentencepiece models (LlamaTokenizer in 4.x).
    add_bos_ = config.add_bos_token.value_or(true);
    add_eos_ = config.add_eos_token.value_or(false);

    const int32_t pieces = sp_.GetPieceSize();
    auto piece_name = [&](int id) -> std::optional<std::string> {
      if (id < 0 || id >= pieces) return std::nullopt;
      return sp_.IdToPiece(id);
    };
    RoleDefaults defaults{piece_name(sp_.bos_id()), piece_name(sp_.eos_id()), piece_name(sp_.pad_id()),
                          piece_name(sp_.unk_id())};
    const ResolvedTokens resolved = resolve_added_tokens(config, defaults, [&](std::string_view t) { return lookup_piece(t); });
    added_ = AddedTokenMatcher(resolved.added);
    special_ = resolved.ids;

    vocab_size_ = pieces;
    for (const auto& t : added_.tokens()) vocab_size_ = std::max(vocab_size_, t.id + 1);
    if (add_bos_ && !special_.bos)
      throw InputError(config.dir.string() + ": add_bos_token is true but there is no bos_token in the tokenizer files");
    if (add_eos_ && !special_.eos)
      throw InputError(config.dir.string() + ": add_eos_token is true but there is no eos_token in the tokenizer files");
  }

  std::vector<int32_t> encode(std::string_view text, bool add_special) const override {
    utf8::require_valid(text);
    std::vector<int32_t> out;
    out.reserve(text.size() / 3 + 2);
    if (add_special && add_bos_) out.push_back(*special_.bos);
    std::vector<AddedTokenMatcher::Piece> pieces;
    added_.split(text, pieces);
    std::vector<int> ids;
    std::string buf;
    for (const auto& p : pieces) {
      if (p.id >= 0) {
        out.push_back(p.id);
        continue;
      }
      const bool at_start = p.text.data() == text.data();
      buf.clear();
      if (add_prefix_ && (legacy_ || at_start)) buf += ' ';
      buf.append(p.text);
      if (const auto st = sp_.Encode(buf, &ids); !st.ok())
        throw InputError(file_.string() + ": sentencepiece failed to encode (" + st.ToString() + ")");
      out.insert(out.end(), ids.begin(), ids.end());
    }
    if (add_special && add_eos_) out.push_back(*special_.eos);
    return out;
  }

  std::string decode(std::span<const int32_t> ids, bool skip_special) const override {
    std::string out;
    std::string bytes;  // a run of <0xNN> byte pieces, kept raw (exact bytes, see tokenizer.h)
    auto flush = [&] { out += bytes, bytes.clear(); };
    for (const int32_t id : ids) {
      check_id(id);
      if (const AddedToken* t = added_.by_id(id)) {
        if (skip_special && t->special) continue;
        flush();
        append_piece(out, t->content);
        continue;
      }
      if (sp_.IsByte(id)) {
        bytes += static_cast<char>(std::stoi(sp_.IdToPiece(id).substr(3, 2), nullptr, 16));
        continue;
      }
      if (skip_special && (sp_.IsControl(id) || sp_.IsUnknown(id))) continue;
      flush();
      append_piece(out, sp_.IdToPiece(id));
    }
    flush();
    if (add_prefix_ && !out.empty() && out[0] == ' ') out.erase(0, 1);
    return out;
  }

  int32_t vocab_size() const override { return vocab_size_; }

  std::optional<int32_t> token_to_id(std::string_view token) const override {
    if (const AddedToken* t = added_.by_content(token)) return t->id;
    return lookup_piece(token);
  }

  std::string id_to_token(int32_t id) const override {
    check_id(id);
    if (const AddedToken* t = added_.by_id(id)) return t->content;
    return sp_.IdToPiece(id);
  }

  bool is_special(int32_t id) const override {
    check_id(id);
    if (const AddedToken* t = added_.by_id(id)) return t->special;
    return sp_.IsControl(id) || sp_.IsUnknown(id);
  }

  std::string describe() const override {
    return "sentencepiece " + file_.filename().string() + " (" + std::to_string(sp_.GetPieceSize()) + " pieces, " +
           std::to_string(added_.tokens().size()) + " added tokens, " + (legacy_ ? "legacy" : "non-legacy") +
           ", prefix space " + (add_prefix_ ? "on" : "off") + ", bos " + (add_bos_ ? "added" : "not added") + ")";
  }

 private:
  std::optional<int32_t> lookup_piece(std::string_view piece) const {
    const int id = sp_.PieceToId(piece);  // the library answers unk_id for an unknown piece
    if (id < 0 || id >= sp_.GetPieceSize() || sp_.IdToPiece(id) != piece) return std::nullopt;
    return id;
  }

  void check_id(int32_t id) const {
    if (id < 0 || id >= vocab_size_)
      throw InputError("token id " + std::to_string(id) + " is outside the vocabulary [0, " + std::to_string(vocab_size_) +
                       ") of " + file_.string());
    // Added tokens may leave a gap above the model's pieces; the library does not range-check its ids.
    if (id >= sp_.GetPieceSize() && !added_.by_id(id))
      throw InputError("token id " + std::to_string(id) + " is neither one of the " + std::to_string(sp_.GetPieceSize()) +
                       " pieces of " + file_.string() + " nor an added token");
  }

  // HF's Replace("▁", " ") decoder step.
  static void append_piece(std::string& out, std::string_view piece) {
    static constexpr std::string_view kMeta = "\xE2\x96\x81";  // U+2581 "▁"
    for (size_t i = 0; i < piece.size();) {
      if (piece.compare(i, kMeta.size(), kMeta) == 0) {
        out += ' ';
        i += kMeta.size();
      } else {
        out += piece[i++];
      }
    }
  }

  std::filesystem::path file_;
  sentencepiece::SentencePieceProcessor sp_;
  AddedTokenMatcher added_;
  bool add_prefix_ = true, legacy_ = false, add_bos_ = true, add_eos_ = false;
  int32_t vocab_size_ = 0;
};

}  // namespace

std::unique_ptr<Tokenizer> make_sentencepiece_tokenizer(const std::filesystem::path& model_file,
                                                        const TokenizerConfig& config) {
  return std::make_unique<SentencePieceTokenizer>(model_file, config);
}

}  // namespace qtrain
