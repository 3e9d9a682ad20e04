// report.html from a run directory: every chart draws one point per finite logged value (counted in the
// SVG polylines' points, the number the page claims in data-points, and all inside the plot), the page
// is self-contained (no script, no external reference), the data report and an export's quality table
// show, and a directory with only metrics.jsonl (or a torn one) still gets a page. The page in a real
// browser: tests/oracle/test_run_report.py and scripts/report_screenshot.sh.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <random>
#include <regex>

#include "data/dataset/example_set.h"
#include "data/error.h"
#include "tests/scratch_dir.h"
#include "trainer/metrics_log.h"
#include "trainer/run_data_report.h"
#include "trainer/run_report.h"
#include "trainer/svg_chart.h"

namespace qtrain {
namespace {
namespace fs = std::filesystem;
using test_tools::ScratchDir;

struct Polyline {
  std::string series;
  int claimed = 0;
  std::vector<std::pair<double, double>> points;
};

// Every <polyline> of the page, in order, with its points parsed.
std::vector<Polyline> polylines(const std::string& html) {
  std::vector<Polyline> out;
  static const std::regex poly(R"re(<polyline class="series" data-series="([^"]*)" data-points="(\d+)"[^>]* points="([^"]*)"/>)re");
  for (auto it = std::sregex_iterator(html.begin(), html.end(), poly); it != std::sregex_iterator(); ++it) {
    Polyline p{(*it)[1], std::stoi((*it)[2]), {}};
    std::istringstream pts((*it)[3].str());
    for (std::string pair; pts >> pair;) {
      const auto comma = pair.find(',');
      p.points.emplace_back(std::stod(pair.substr(0, comma)), std::stod(pair.substr(comma + 1)));
    }
    out.push_back(p);
  }
  return out;
}

void write(const fs::path& p, const std::string& s) { std::ofstream(p) << s; }

TEST(RunReport, EveryChartHasOnePointPerLoggedValue) {
  const unsigned seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  ScratchDir tmp("run-report");
  const fs::path run = tmp.path / "my-run";
  fs::create_directories(run);
  const int steps = 20 + static_cast<int>(rng() % 60), eval_every = 5 + static_cast<int>(rng() % 5);
  int evals = 0, nan_grads = 0;
  {
    MetricsLog log(run / "metrics.jsonl", steps, true, std::nullopt);
    std::uniform_real_distribution<double> u(0, 1);
    log.record("eval", 0, {{"eval_loss", 6.0}, {"eval_ppl", std::exp(6.0)}, {"eval_token_acc", 0.01}});
    ++evals;
    for (int s = 1; s <= steps; ++s) {
      const bool nan = u(rng) < 0.1;
      nan_grads += nan;
      log.record("train", s, {{"loss", 6.0 / s + u(rng)}, {"lr", 1e-4 * s / steps}, {"grad_norm", nan ? NAN : u(rng)},
                              {"tokens_per_s", 1000 + 100 * u(rng)}, {"peak_mem_mib", 500.0 + s}, {"tokens", 100.0 * s}, {"eta_s", 1.0}});
      if (s % eval_every == 0 || s == steps) {
        log.record("eval", s, {{"eval_loss", 5.0 / s}, {"eval_ppl", std::exp(5.0 / s)}, {"eval_token_acc", 0.5}});
        ++evals;
      }
    }
  }
  const std::string html = run_report_html(run);
  const auto lines = polylines(html);
  std::map<std::string, size_t> want = {{"train", steps}, {"held-out", evals},          {"lr", steps},
                                        {"grad_norm", steps - nan_grads}, {"tokens_per_s", steps}, {"peak_mem_mib", steps},
                                        {"eval_token_acc", evals}};
  ASSERT_EQ(lines.size(), want.size()) << "one polyline per series of the six charts";
  for (const auto& l : lines) {
    ASSERT_TRUE(want.count(l.series)) << l.series;
    EXPECT_EQ(l.points.size(), want[l.series]) << l.series;
    EXPECT_EQ(static_cast<size_t>(l.claimed), l.points.size()) << l.series;
    double last_x = -1;
    for (const auto& [x, y] : l.points) {
      EXPECT_GE(x, 58 - 1e-9) << l.series;  // inside the plot area of the 480 × 260 viewBox
      EXPECT_LE(x, 480 - 14 + 1e-9) << l.series;
      EXPECT_GE(y, 34 - 1e-9) << l.series;
      EXPECT_LE(y, 260 - 40 + 1e-9) << l.series;
      EXPECT_GT(x, last_x) << l.series << ": steps increase left to right";
      last_x = x;
    }
  }
  // The learning rate rises linearly with the step: its points lie on one straight line.
  for (const auto& l : lines)
    if (l.series == "lr") {
      const auto& a = l.points.front();
      const auto& b = l.points.back();
      for (const auto& [x, y] : l.points) EXPECT_NEAR(y, a.second + (b.second - a.second) * (x - a.first) / (b.first - a.first), 0.02);
    }
  // Self-contained: no script, no external reference (the SVG namespace is a name, not a fetch).
  EXPECT_EQ(html.find("<script"), std::string::npos);
  EXPECT_EQ(html.find("src="), std::string::npos);
  EXPECT_EQ(html.find("href="), std::string::npos);
  EXPECT_EQ(html.find("url("), std::string::npos);
  EXPECT_EQ(html.find("@import"), std::string::npos);
  EXPECT_NE(html.find("<h1>my-run</h1>"), std::string::npos);
  EXPECT_NE(html.find("not finished"), std::string::npos) << "no adapter/: the run is not finished";
  EXPECT_EQ(html.find("<h2>Data</h2>"), std::string::npos) << "no data_report.json, no data section";
}

TEST(RunReport, DataReportExportsAndRecipeShow) {
  ScratchDir tmp("run-report-full");
  const fs::path run = tmp.path / "run";
  fs::create_directories(run / "adapter");
  fs::create_directories(run / "export-gptq");
  {
    MetricsLog log(run / "metrics.jsonl", 2, true, std::nullopt);
    log.record("eval", 0, {{"eval_loss", 8.5}, {"eval_ppl", std::exp(8.5)}, {"eval_token_acc", 0.0}});
    log.record("train", 1, {{"loss", 3.0}, {"lr", 1e-3}, {"grad_norm", 1.0}, {"tokens", 50}});
    log.record("train", 2, {{"loss", 2.0}, {"lr", 1e-3}, {"grad_norm", 1.0}, {"tokens", 100}});
    log.record("eval", 2, {{"eval_loss", 0.915}, {"eval_ppl", std::exp(0.915)}, {"eval_token_acc", 0.7665}});
  }
  write(run / "config.yaml", "# resolved\nmodel:\n  path: \"/nonexistent/base\"\n  target_modules: [\"all-linear\"]\nquantization:\n  enabled: true\n"
                             "  quant_type: nf4\n  double_quant: true\n  blocksize: 64\nlora:\n  r: 16\n  alpha: 32\n  dropout: 0.05\n"
                             "training:\n  max_steps: 2\n  learning_rate: 0.003\ndata:\n  files: [{path: \"data/a<b>.jsonl\", weight: 1}]\n  format: alpaca\n");
  DataReport dr;
  dr.train_files.records = 3000;
  dr.train_files.examples = 2990;
  dr.train_files.dropped_no_labels = 10;
  dr.train_examples = 2840;
  dr.eval_examples = 150;
  dr.format = "alpaca";
  dr.template_used = "plain";
  dr.warnings = {"warning: something odd"};
  ExampleSet train;
  for (const int len : {3, 5, 9, 17, 17, 40}) train.add(std::vector<int32_t>(len, 1), std::vector<uint8_t>(len, 1));
  write_data_report(run / "data_report.json", dr, &train);
  write(run / "export-gptq" / "export_report.json",
        R"J({"format": "gptq", "size": {"bytes_on_disk": 1048576, "bf16_bytes": 4194304, "ratio_to_bf16": 0.25},
            "evaluation": {"text": "wiki.test.raw", "windows": 12, "seq_len": 256, "heldout_examples": 150},
            "models": [{"name": "merged (bf16)", "text": {"ppl": 31.25, "nll": 3.44, "kl": 0.0, "tokens": 3000}, "heldout": {"nll": 1.0, "ppl": 2.718}},
                       {"name": "GPTQ w4 g128 (as written)", "text": {"ppl": 33.5, "nll": 3.5, "kl": 0.0123, "tokens": 3000}, "bytes": 1048576}]})J");
  const std::string html = run_report_html(run);
  for (const std::string want : {"<h2>Data</h2>", "2\u2009990", "warning: something odd", "<h2>Exports</h2>", "GPTQ w4 g128 (as written)",
                                 "33.5000", "1.230e-02", "25.0% of bf16", "data/a&lt;b&gt;.jsonl", "r 16, alpha 32", "<details>",
                                 "0.915", "76.6", ">finished<"})
    EXPECT_NE(html.find(want), std::string::npos) << "missing: " << want;
  // The histogram: lengths 3..40 in 16 buckets of 3 tokens (3-5, 6-8, ..., 39-41), one bar each.
  size_t bars = 0;
  for (size_t pos = 0; (pos = html.find("<rect class=\"bar\"", pos)) != std::string::npos; ++pos) ++bars;
  EXPECT_EQ(bars, 13u);
  EXPECT_NE(html.find("3–5: 2"), std::string::npos) << "3 and 5";
  EXPECT_NE(html.find("15–17: 2"), std::string::npos) << "17 twice";
  EXPECT_NE(html.find("39–41: 1"), std::string::npos);
}

TEST(RunReport, OnlyMetricsOrATornLineStillReportsAndNoMetricsIsAnError) {
  ScratchDir tmp("run-report-min");
  write(tmp.path / "metrics.jsonl", "{\"kind\": \"train\", \"step\": 1, \"loss\": 2}\n{\"kind\": \"train\", \"step\": 2, \"loss\": 1}\n{\"kind\": \"tr");
  const std::string html = run_report_html(tmp.path);
  const auto lines = polylines(html);
  const auto train = std::find_if(lines.begin(), lines.end(), [](const Polyline& l) { return l.series == "train"; });
  ASSERT_NE(train, lines.end());
  EXPECT_EQ(train->points.size(), 2u);
  EXPECT_NE(html.find("1 line(s) of metrics.jsonl are not records"), std::string::npos);
  EXPECT_NE(html.find("no data"), std::string::npos) << "charts without values say so";
  write_run_report(tmp.path, tmp.path / "r.html");
  EXPECT_TRUE(fs::is_regular_file(tmp.path / "r.html"));

  fs::remove(tmp.path / "metrics.jsonl");
  try {
    run_report_html(tmp.path);
    FAIL() << "no metrics.jsonl was accepted";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("metrics.jsonl"), std::string::npos) << e.what();
  }
  EXPECT_NE(write_run_report_at_end(tmp.path).find("warning: report.html not written"), std::string::npos);
}

TEST(SvgChart, EscapesAndDrawsFlatAndEmptySeries) {
  EXPECT_EQ(html_escape("a<b & \"c\" 'd'>"), "a&lt;b &amp; &quot;c&quot; &#39;d&#39;&gt;");
  const std::string flat = render_svg({"t", "", {{"s", "#000", {{1, 5}, {2, 5}, {3, 5}}, false}}});
  EXPECT_EQ(polylines(flat).at(0).points.size(), 3u);
  for (const auto& [x, y] : polylines(flat)[0].points) EXPECT_TRUE(std::isfinite(y));
  const std::string single = render_svg({"t", "", {{"s", "#000", {{7, 1}}, true}}});
  EXPECT_EQ(polylines(single).at(0).points.size(), 1u);
  EXPECT_NE(render_svg({"t", "", {{"s", "#000", {{1, NAN}}, false}}}).find("no data"), std::string::npos);
}

}  // namespace
}  // namespace qtrain
