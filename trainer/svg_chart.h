// Line charts as inline SVG for the HTML run report (trainer/run_report.h): no scripts, no fonts or
// files fetched, scaled by the page (viewBox + width 100%). One <polyline> per series with exactly one
// "x,y" pair per finite point, in order, so a test can count what was drawn.
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace qtrain {

struct ChartSeries {
  std::string name;                              // the legend
  std::string color;                             // CSS colour
  std::vector<std::pair<double, double>> points;  // (step, value); non-finite values are left out
  bool markers = false;                          // a dot per point too (sparse series: evaluations)
};

struct LineChart {
  std::string title;
  std::string y_label;  // unit, shown beside the title
  std::vector<ChartSeries> series;
};

// <svg ...>...</svg>: axes with "nice" ticks from the data's range, a polyline per series, a legend.
// A chart without a finite point says "no data" instead of drawing axes over nothing.
std::string render_svg(const LineChart& chart);

// A bar chart of counts per labelled bucket (the data report's length histogram).
std::string render_svg_bars(const std::string& title, const std::vector<std::pair<std::string, double>>& bars);

// Escapes & < > " ' for HTML text and attributes.
std::string html_escape(const std::string& s);

}  // namespace qtrain
