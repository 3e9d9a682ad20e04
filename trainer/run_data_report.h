// The data report of a run as JSON (<output_dir>/data_report.json), for the HTML run report: what
// building the dataset found (data/dataset/data_report.h: counts per split, template, pad, cache),
// the linter's findings, and the token-length histogram of the training split (16 equal buckets from
// the shortest to the longest example).
#pragma once

#include <filesystem>

#include <nlohmann/json.hpp>

#include "data/dataset/data_report.h"

namespace qtrain {

struct ExampleSet;

// train may be null (no histogram then).
nlohmann::ordered_json data_report_json(const DataReport& report, const ExampleSet* train);

// Written atomically.
void write_data_report(const std::filesystem::path& file, const DataReport& report, const ExampleSet* train);

}  // namespace qtrain
