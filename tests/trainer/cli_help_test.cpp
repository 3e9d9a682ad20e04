// `qtrain --help` lists every verb with its summary in one aligned column, and every verb's --help
// ends with a worked example (trainer/cli/cli_examples.h) whose first words are the verb's own.
#include <gtest/gtest.h>

#include <regex>
#include <set>
#include <sstream>

#include "tests/cli_run.h"

namespace qtrain {
namespace {
using test_tools::run_qtrain;

TEST(CliHelp, EveryVerbIsListedAlignedAndItsHelpShowsAnExample) {
  const auto top = run_qtrain("--help");
  ASSERT_EQ(top.code, 0) << top.output;
  std::vector<std::string> verbs;
  std::set<size_t> summary_columns;
  std::istringstream in(top.output);
  bool in_verbs = false;
  for (std::string line; std::getline(in, line);) {
    if (line == "verbs:") {
      in_verbs = true;
      continue;
    }
    if (!in_verbs) continue;
    if (line.empty()) break;
    static const std::regex row(R"(  (\S+)( +)(\S.*))");
    std::smatch m;
    ASSERT_TRUE(std::regex_match(line, m, row)) << "not a verb row: '" << line << "'";
    verbs.push_back(m[1]);
    summary_columns.insert(static_cast<size_t>(m.position(3)));
    EXPECT_GE(m[2].length(), 2) << line;
  }
  ASSERT_GE(verbs.size(), 10u) << top.output;
  EXPECT_EQ(summary_columns.size(), 1u) << "summaries start in one column:\n" << top.output;

  std::vector<std::string> commands;
  for (const auto& v : verbs) {
    if (v != "data") commands.push_back(v);
    else for (const char* sub : {"data preview", "data stats", "data render"}) commands.push_back(sub);  // data dispatches
  }
  for (const auto& c : commands) {
    const auto h = run_qtrain(c + " --help");
    EXPECT_EQ(h.code, 0) << c << ":\n" << h.output;
    EXPECT_NE(h.output.find("example:\n  qtrain " + c + " "), std::string::npos) << "qtrain " << c << " --help has no example of itself:\n" << h.output;
  }
}

}  // namespace
}  // namespace qtrain
