// qtrain tokenize DIR [--text T | --file F [--lines]] [--no-special] [--decode]
// For users checking a tokenizer and for the oracle tests: prints the ids of the text (space-
// separated, one line per input line with --lines), or with --decode reads ids and prints the text.
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>

#include "data/error.h"
#include "data/tokenizer/tokenizer.h"
#include "trainer/cli/cli.h"
#include "trainer/cli/cli_options.h"

namespace qtrain::cli {
namespace {

// Ids separated by spaces, tabs or commas. `where` names the source for the error.
std::vector<int32_t> parse_ids(std::string_view s, const std::string& where, bool usage) {
  std::vector<int32_t> ids;
  size_t i = 0;
  while (i < s.size()) {
    while (i < s.size() && (s[i] == ' ' || s[i] == '\t' || s[i] == ',' || s[i] == '\r')) ++i;
    if (i == s.size()) break;
    size_t j = i;
    while (j < s.size() && !(s[j] == ' ' || s[j] == '\t' || s[j] == ',' || s[j] == '\r')) ++j;
    const std::string word(s.substr(i, j - i));
    size_t used = 0;
    long long v = -1;
    try {
      v = std::stoll(word, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != word.size() || v < 0 || v > INT32_MAX) {
      const std::string msg = where + ": '" + word + "' is not a token id (expected non-negative integers)";
      if (usage) throw UsageError(msg);
      throw InputError(msg);
    }
    ids.push_back(static_cast<int32_t>(v));
    i = j;
  }
  return ids;
}

void append_ids(std::string& out, const std::vector<int32_t>& ids) {
  for (size_t k = 0; k < ids.size(); ++k) {
    if (k) out += ' ';
    out += std::to_string(ids[k]);
  }
  out += '\n';
}

// Runs `fn` and prefixes an InputError from it (bad UTF-8, an unknown id) with where it happened.
template <typename Fn>
auto at_location(const std::string& where, Fn&& fn) {
  try {
    return fn();
  } catch (const InputError& e) {
    throw InputError(where + ": " + e.what());
  }
}

}  // namespace

int run_tokenize(const std::vector<std::string>& args) {
  VerbSpec spec;
  spec.usage = "qtrain tokenize DIR [--text T | --file F [--lines]] [--no-special] [--decode]";
  std::string dir, text, file;
  spec.options.add_options()
      ("text", po::value(&text), "the text to encode (or, with --decode, the ids)")
      ("file", po::value(&file), "read the text (or ids) from this file; the whole file is one text")
      ("lines", po::bool_switch(), "with --file: each line is a text of its own, one output line per input line")
      ("no-special", po::bool_switch(), "encode without the post-processor's BOS/EOS; decode without special tokens")
      ("decode", po::bool_switch(), "read ids and print the text they decode to (followed by a newline)");
  spec.hidden.add_options()("dir", po::value(&dir)->required(), "model or tokenizer directory");
  spec.positional.add("dir", 1);
  const auto vm = parse_verb(args, spec);
  if (!vm) return 0;
  const bool has_text = vm->count("text") > 0, has_file = vm->count("file") > 0;
  const bool lines = (*vm)["lines"].as<bool>(), decode = (*vm)["decode"].as<bool>();
  const bool special = !(*vm)["no-special"].as<bool>();
  if (has_text == has_file) throw UsageError("tokenize: give exactly one of --text and --file");
  if (lines && !has_file) throw UsageError("tokenize: --lines needs --file");

  const auto tok = load_tokenizer(resolve_model_arg(dir, "model"));
  std::string input = text;
  if (has_file) {
    std::ifstream in(file, std::ios::binary);
    if (!in) throw InputError(file + ": cannot open file");
    std::ostringstream ss;
    ss << in.rdbuf();
    input = ss.str();
  }
  const std::string source = has_file ? file : std::string("--text");

  std::string out;
  auto handle = [&](std::string_view chunk, const std::string& where) {
    if (decode) {
      const auto ids = parse_ids(chunk, where, !has_file);
      out += at_location(where, [&] { return tok->decode(ids, /*skip_special=*/!special); });
      out += '\n';
    } else {
      append_ids(out, at_location(where, [&] { return tok->encode(chunk, special); }));
    }
    if (out.size() > (1 << 20)) std::fwrite(out.data(), 1, out.size(), stdout), out.clear();
  };
  if (lines) {
    // Lines end at '\n' only (a '\r' stays part of the text); the text after the last '\n' is a
    // line only when it is not empty, as with any text file.
    size_t pos = 0, lineno = 1;
    while (pos < input.size()) {
      size_t end = input.find('\n', pos);
      if (end == std::string::npos) end = input.size();
      handle(std::string_view(input).substr(pos, end - pos), source + ":" + std::to_string(lineno++));
      pos = end + 1;
    }
  } else {
    handle(input, source);
  }
  std::fwrite(out.data(), 1, out.size(), stdout);
  std::fflush(stdout);
  return 0;
}

}  // namespace qtrain::cli
