// The dataset pipeline from recipe to tokens: read each data file (dataset_records), render each
// record in its format (dataset_formats, chat_template), tokenize and mask it (example_tokenizer),
// count what happened (data_report), cache the result per file in HDF5 (token_cache), then hold out
// the eval split and apply file weights, deterministically from DataConfig::seed.
#pragma once

#include <filesystem>
#include <memory>

#include "data/dataset/chat_template.h"
#include "data/dataset/data_config.h"
#include "data/dataset/data_report.h"
#include "data/dataset/example_set.h"
#include "data/progress.h"
#include "data/tokenizer/tokenizer.h"

namespace qtrain {

struct TokenizedDataset {
  std::shared_ptr<const ExampleSet> train;  // file order, eval held out, weights applied
  std::shared_ptr<const ExampleSet> eval;   // eval_files, or the eval_fraction hold-out; may be empty
};

// model_dir supplies tokenizer_config.json (chat template detection) and the tokenizer files that key
// the cache. Throws UsageError for an impossible config or an unknown chat template, InputError naming
// file and line for bad data (under on_error: skip, bad records are counted in the report instead),
// and InputError when no example is left with a trained token. report may be null. Tokenizing a file
// that is not in the cache shows a progress line on `console`.
TokenizedDataset build_dataset(const DataConfig& config, const Tokenizer& tok, const std::filesystem::path& model_dir,
                               DataReport* report, const ConsoleOptions& console = {});

// Where the token cache goes when DataConfig::cache_dir is empty: $XDG_CACHE_HOME/qtrain/data or
// ~/.cache/qtrain/data.
std::filesystem::path default_data_cache_dir();

}  // namespace qtrain
