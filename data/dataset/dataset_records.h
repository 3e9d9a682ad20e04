// Reading dataset files into JSON records, each with the place it came from ("file:line"), so every
// later error can name the line at fault. A .jsonl file has one record per non-blank line; a .json
// file holds one array of records (or one object: a single record); a .txt file is one text record.
#pragma once

#include <filesystem>
#include <functional>
#include <string>

#include <nlohmann/json.hpp>

namespace qtrain {

struct Record {
  nlohmann::ordered_json value;  // key order kept, as Python reads it (templates print tool arguments in order)
  std::string where;  // "data/train.jsonl:17"
};

// Calls on_record for each record in file order. A record that does not parse (malformed JSON,
// invalid UTF-8) is passed to on_bad instead with a message naming file and line; on_bad decides
// whether to throw (on_error: fail) or count it (skip). Throws InputError when the file cannot be read,
// is empty, or (a .json file) is not valid JSON as a whole: then no line can be trusted.
void read_records(const std::filesystem::path& file, const std::function<void(const Record&)>& on_record,
                  const std::function<void(const std::string& message)>& on_bad);

// The whole file as bytes; InputError naming the file when it cannot be read.
std::string read_file_bytes(const std::filesystem::path& file);

}  // namespace qtrain
