#include "data/dataset/dataset_records.h"

#include <fstream>
#include <sstream>
#include <vector>

#include "data/error.h"
#include "data/json_depth.h"
#include "data/tokenizer/utf8.h"

namespace qtrain {
namespace {

size_t line_of(const std::string& text, size_t offset) {
  size_t line = 1;
  for (size_t i = 0; i < offset && i < text.size(); ++i) line += text[i] == '\n';
  return line;
}

// Byte offsets where the top-level array's elements start. A small scanner (strings, escapes,
// nesting) instead of the parser's callback API, because that API does not report positions.
std::vector<size_t> array_element_starts(const std::string& text) {
  std::vector<size_t> starts;
  int depth = 0;
  bool in_string = false, escape = false, expect_element = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (escape) escape = false;
      else if (c == '\\') escape = true;
      else if (c == '"') in_string = false;
      continue;
    }
    if (c == ' ' || c == '\t' || c == '\n' || c == '\r') continue;
    if (expect_element && c != ']') starts.push_back(i);
    expect_element = false;
    if (c == '"') in_string = true;
    else if (c == '[' || c == '{') {
      if (++depth == 1 && c == '[') expect_element = true;
    } else if (c == ']' || c == '}') --depth;
    else if (c == ',' && depth == 1) expect_element = true;
  }
  return starts;
}

bool blank(std::string_view s) {
  return s.find_first_not_of(" \t\r\n") == std::string_view::npos;
}

}  // namespace

std::string read_file_bytes(const std::filesystem::path& file) {
  // A path that names nothing is the recipe's (or command line's) error, like a missing model.path.
  if (!std::filesystem::exists(file)) throw UsageError(file.string() + ": no such dataset file");
  std::ifstream in(file, std::ios::binary);
  if (!in) throw InputError(file.string() + ": cannot open dataset file");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void read_records(const std::filesystem::path& file, const std::function<void(const Record&)>& on_record,
                  const std::function<void(const std::string& message)>& on_bad) {
  const std::string text = read_file_bytes(file);
  const std::string name = file.string();
  if (blank(text)) throw InputError(name + ": empty dataset file (no records)");
  const std::string ext = file.extension().string();

  if (ext == ".txt") {
    if (const size_t bad = utf8::find_invalid(text); bad != std::string::npos)
      on_bad(name + ":" + std::to_string(line_of(text, bad)) + ": invalid UTF-8 at byte " + std::to_string(bad));
    else
      on_record(Record{nlohmann::ordered_json{{"text", text}}, name + ":1"});
    return;
  }

  const size_t first = text.find_first_not_of(" \t\r\n");
  // A .jsonl file, or a .json file that is really JSON lines (starts with an object and has more
  // than one line): one record per line, so one bad line does not lose the others.
  bool lines = ext == ".jsonl";
  const std::string too_deep = ": JSON nested deeper than " + std::to_string(kMaxJsonDepth) + " levels";
  // A single deep object is read line by line below, where the deep line is reported on its own.
  if (!lines && text[first] == '{' && json_too_deep_at(text) == std::string::npos) {
    // json::exception, not only parse_error: a number too large for a double is an out_of_range.
    nlohmann::ordered_json j;
    try {
      j = nlohmann::ordered_json::parse(text);
    } catch (const nlohmann::json::exception&) {
      lines = true;
    }
    if (!lines) {
      on_record(Record{std::move(j), name + ":" + std::to_string(line_of(text, first))});
      return;
    }
  }
  if (lines) {
    size_t pos = 0, lineno = 0;
    while (pos < text.size()) {
      size_t end = text.find('\n', pos);
      if (end == std::string::npos) end = text.size();
      ++lineno;
      const std::string_view line(text.data() + pos, end - pos);
      pos = end + 1;
      if (blank(line)) continue;
      const std::string where = name + ":" + std::to_string(lineno);
      if (json_too_deep_at(line) != std::string_view::npos) {
        on_bad(where + too_deep);
        continue;
      }
      nlohmann::ordered_json j;
      try {
        j = nlohmann::ordered_json::parse(line);
      } catch (const nlohmann::json::exception& e) {
        const size_t bad = utf8::find_invalid(line);
        if (bad != std::string::npos)
          on_bad(where + ": invalid UTF-8 at column " + std::to_string(bad + 1));
        else
          on_bad(where + ": malformed JSON line (" + std::string(e.what()) + ")");
        continue;
      }
      on_record(Record{std::move(j), where});
    }
    return;
  }

  if (const size_t deep = json_too_deep_at(text); deep != std::string::npos)
    throw InputError(name + ":" + std::to_string(line_of(text, deep)) + too_deep);
  nlohmann::ordered_json all;
  try {
    all = nlohmann::ordered_json::parse(text);
  } catch (const nlohmann::ordered_json::parse_error& e) {
    const size_t at = e.byte == 0 ? 0 : e.byte - 1;
    const size_t bad = utf8::find_invalid(text);
    if (bad != std::string::npos)
      throw InputError(name + ":" + std::to_string(line_of(text, bad)) + ": invalid UTF-8 at byte " + std::to_string(bad));
    throw InputError(name + ":" + std::to_string(line_of(text, at)) + ": malformed JSON (" + e.what() + ")");
  } catch (const nlohmann::json::exception& e) {  // out_of_range: a number too large for a double
    throw InputError(name + ": malformed JSON (" + e.what() + ")");
  }
  if (!all.is_array())
    throw InputError(name + ": expected a JSON array of records (or JSON lines), found " + std::string(all.type_name()));
  if (all.empty()) throw InputError(name + ": empty dataset file (the array has no records)");
  const auto starts = array_element_starts(text);
  const bool have_lines = starts.size() == all.size();
  size_t line = 1, scanned = 0;  // one pass over the text: the starts are increasing
  for (size_t i = 0; i < all.size(); ++i) {
    std::string where = name + ": record " + std::to_string(i);
    if (have_lines) {
      for (; scanned < starts[i]; ++scanned) line += text[scanned] == '\n';
      where = name + ":" + std::to_string(line);
    }
    on_record(Record{std::move(all[i]), where});
  }
}

}  // namespace qtrain
