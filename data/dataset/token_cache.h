// The HDF5 token cache: one file per dataset file, holding its tokenized examples (/tokens int32,
// /trained uint8, /offsets int64) and the FileCounts the linter reports, under a key that names
// everything the tokens depend on (see dataset.cpp: tokenizer file contents, the data file's
// contents, format, template, train_on, length limits, role map, pipeline version). The key text
// is stored in the file and compared in full on read; the file name carries its hash.
// Written to a temporary name in the same directory and renamed into place, so a reader never sees
// a partial file under the final name; a stale, partial or corrupt file is reported (why) and the
// caller rebuilds it.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <string_view>

#include "data/dataset/data_report.h"
#include "data/dataset/example_set.h"

namespace qtrain {

struct CachedTokens {
  ExampleSet examples;
  FileCounts counts;
};

// nullopt with *why set when the file is absent ("no cache file"), unreadable, written under
// another key, or inconsistent (offsets not increasing, sizes disagreeing, a missing dataset).
std::optional<CachedTokens> read_token_cache(const std::filesystem::path& file, const std::string& key, std::string* why);

// Throws std::runtime_error naming the file when it cannot be written (the caller may go on without).
void write_token_cache(const std::filesystem::path& file, const std::string& key, const CachedTokens& c);

// 64-bit non-cryptographic content hash as 16 hex digits (cache keys: not a security boundary).
std::string content_hash(std::string_view bytes);

}  // namespace qtrain
