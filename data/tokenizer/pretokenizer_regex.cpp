#define PCRE2_CODE_UNIT_WIDTH 8
#include "data/tokenizer/pretokenizer_regex.h"

#include <pcre2.h>

#include "data/error.h"

namespace qtrain {

struct PretokenizerRegex::Impl {
  pcre2_code* code = nullptr;
  bool jit = false;
  ~Impl() { pcre2_code_free(code); }
};

PretokenizerRegex::PretokenizerRegex(std::string_view pattern, const std::string& where)
    : pattern_(pattern), impl_(std::make_unique<Impl>()) {
  int err = 0;
  PCRE2_SIZE offset = 0;
  // UCP makes \s, \w, \d and the POSIX classes Unicode-aware, as in the Rust / Oniguruma engines the
  // HF tokenizers use.
  impl_->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern_.data()), pattern_.size(), PCRE2_UTF | PCRE2_UCP,
                              &err, &offset, nullptr);
  if (!impl_->code) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof msg);
    throw InputError(where + ": pre-tokenizer regex does not compile at offset " + std::to_string(offset) + " (" +
                     reinterpret_cast<const char*>(msg) + "): " + pattern_);
  }
  // JIT is an optimisation only: when the platform lacks it, the interpreter gives the same matches.
  impl_->jit = pcre2_jit_compile(impl_->code, PCRE2_JIT_COMPLETE) == 0;
}

PretokenizerRegex::~PretokenizerRegex() = default;
PretokenizerRegex::PretokenizerRegex(PretokenizerRegex&&) noexcept = default;
PretokenizerRegex& PretokenizerRegex::operator=(PretokenizerRegex&&) noexcept = default;

void PretokenizerRegex::split(std::string_view text, std::vector<std::string_view>& out) const {
  // Match data is per call, so one compiled regex serves many threads.
  std::unique_ptr<pcre2_match_data, decltype(&pcre2_match_data_free)> md(
      pcre2_match_data_create_from_pattern(impl_->code, nullptr), &pcre2_match_data_free);
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  size_t pos = 0, emitted = 0;
  while (pos < text.size()) {
    // Input was validated once by the caller; NO_UTF_CHECK avoids re-scanning it at every match.
    const int rc = impl_->jit ? pcre2_jit_match(impl_->code, subject, text.size(), pos, PCRE2_NO_UTF_CHECK, md.get(), nullptr)
                              : pcre2_match(impl_->code, subject, text.size(), pos, PCRE2_NO_UTF_CHECK, md.get(), nullptr);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(rc, msg, sizeof msg);
      throw InputError("pre-tokenizer regex failed on the text (" + std::string(reinterpret_cast<const char*>(msg)) + ")");
    }
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md.get());
    const size_t begin = ov[0], end = ov[1];
    if (end == begin) {
      // An empty match carries no text; step over one character so the scan moves on.
      ++pos;
      while (pos < text.size() && (static_cast<unsigned char>(text[pos]) & 0xC0) == 0x80) ++pos;
      continue;
    }
    if (begin > emitted) out.push_back(text.substr(emitted, begin - emitted));
    out.push_back(text.substr(begin, end - begin));
    emitted = pos = end;
  }
  if (emitted < text.size()) out.push_back(text.substr(emitted));
}

std::string regex_quote(std::string_view literal) {
  std::string out;
  for (char c : literal) {
    if (std::string_view("\\^$.|?*+()[]{}/-").find(c) != std::string_view::npos) out += '\\';
    out += c;
  }
  return out;
}

}  // namespace qtrain
