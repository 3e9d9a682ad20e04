// One worked example per verb, shown at the end of `qtrain VERB --help` (cli_options.cpp parse_verb):
// a command that runs as written after the quick start (runs/quickstart), so a reader can paste it.
#pragma once

#include <string>

namespace qtrain::cli {

// The example for a verb, found by the words of its usage line before the first argument
// ("qtrain data stats RECIPE ..." → "qtrain data stats"); "" when the table has none.
std::string verb_example(const std::string& usage);

}  // namespace qtrain::cli
