#include "trainer/svg_chart.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>

namespace qtrain {
namespace {

// Chart geometry in viewBox units; the page scales the whole.
constexpr double kW = 480, kH = 260, kLeft = 58, kRight = 14, kTop = 34, kBottom = 40;

std::string num(double v, const char* fmt = "%.2f") {
  char b[64];
  std::snprintf(b, sizeof b, fmt, v);
  return b;
}

// A tick label: short, and readable for learning rates (1e-4) as for token counts (12000).
std::string tick_label(double v) {
  if (v == 0) return "0";
  const double a = std::fabs(v);
  if (a >= 1e5 || a < 1e-2) return num(v, "%.2g");
  if (a >= 100) return num(v, "%.0f");
  return num(v, "%.3g");
}

// Ticks at 1, 2 or 5 × 10^k covering [lo, hi], about `n` of them.
std::vector<double> nice_ticks(double lo, double hi, int n) {
  const double span = hi - lo;
  const double raw = span / n;
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  double step = mag;
  for (const double m : {1.0, 2.0, 5.0, 10.0})
    if (m * mag >= raw) {
      step = m * mag;
      break;
    }
  std::vector<double> t;
  for (double v = std::ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) t.push_back(std::fabs(v) < step * 1e-9 ? 0 : v);
  return t;
}

}  // namespace

std::string html_escape(const std::string& s) {
  std::string o;
  o.reserve(s.size());
  for (const char c : s) switch (c) {
      case '&': o += "&amp;"; break;
      case '<': o += "&lt;"; break;
      case '>': o += "&gt;"; break;
      case '"': o += "&quot;"; break;
      case '\'': o += "&#39;"; break;
      default: o += c;
    }
  return o;
}

std::string render_svg(const LineChart& chart) {
  double x0 = std::numeric_limits<double>::infinity(), x1 = -x0, y0 = x0, y1 = -x0;
  for (const auto& s : chart.series)
    for (const auto& [x, y] : s.points)
      if (std::isfinite(x) && std::isfinite(y)) {
        x0 = std::min(x0, x), x1 = std::max(x1, x), y0 = std::min(y0, y), y1 = std::max(y1, y);
      }
  std::string svg = "<svg class=\"chart\" viewBox=\"0 0 " + num(kW, "%.0f") + " " + num(kH, "%.0f") +
                    "\" xmlns=\"http://www.w3.org/2000/svg\" role=\"img\" aria-label=\"" + html_escape(chart.title) + "\">";
  svg += "<text class=\"title\" x=\"" + num(kLeft) + "\" y=\"18\">" + html_escape(chart.title) +
         (chart.y_label.empty() ? "" : " <tspan class=\"unit\">(" + html_escape(chart.y_label) + ")</tspan>") + "</text>";
  if (!std::isfinite(x0)) return svg + "<text class=\"empty\" x=\"" + num(kW / 2) + "\" y=\"" + num(kH / 2) + "\">no data</text></svg>";
  // A flat series still gets a visible band; the y axis starts at 0 when the data is near it.
  if (y1 - y0 < 1e-12 * std::max(1.0, std::fabs(y1))) y0 -= std::max(std::fabs(y0) * 0.1, 1e-12), y1 += std::max(std::fabs(y1) * 0.1, 1e-12);
  if (y0 > 0 && y0 < (y1 - y0) * 0.5) y0 = 0;
  const double pad = (y1 - y0) * 0.05;
  y1 += pad;
  if (y0 != 0) y0 -= pad;
  if (x1 == x0) x0 -= 1, x1 += 1;
  const double pw = kW - kLeft - kRight, ph = kH - kTop - kBottom;
  auto px = [&](double x) { return kLeft + (x - x0) / (x1 - x0) * pw; };
  auto py = [&](double y) { return kTop + (y1 - y) / (y1 - y0) * ph; };

  svg += "<g class=\"grid\">";
  for (const double t : nice_ticks(y0, y1, 5)) {
    svg += "<line x1=\"" + num(kLeft) + "\" x2=\"" + num(kW - kRight) + "\" y1=\"" + num(py(t)) + "\" y2=\"" + num(py(t)) + "\"/>";
    svg += "<text class=\"ylab\" x=\"" + num(kLeft - 6) + "\" y=\"" + num(py(t) + 4) + "\">" + tick_label(t) + "</text>";
  }
  for (const double t : nice_ticks(x0, x1, 6)) {
    svg += "<line x1=\"" + num(px(t)) + "\" x2=\"" + num(px(t)) + "\" y1=\"" + num(kTop) + "\" y2=\"" + num(kTop + ph) + "\"/>";
    svg += "<text class=\"xlab\" x=\"" + num(px(t)) + "\" y=\"" + num(kTop + ph + 16) + "\">" + tick_label(t) + "</text>";
  }
  svg += "</g><rect class=\"frame\" x=\"" + num(kLeft) + "\" y=\"" + num(kTop) + "\" width=\"" + num(pw) + "\" height=\"" + num(ph) + "\"/>";
  svg += "<text class=\"xname\" x=\"" + num(kLeft + pw / 2) + "\" y=\"" + num(kH - 4) + "\">step</text>";

  double legend_x = kW - kRight;
  for (auto it = chart.series.rbegin(); it != chart.series.rend(); ++it) {  // right-aligned, first series leftmost
    const auto& s = *it;
    std::string pts;
    int n = 0;
    for (const auto& [x, y] : s.points) {
      if (!std::isfinite(x) || !std::isfinite(y)) continue;
      pts += (n++ ? " " : "") + num(px(x)) + "," + num(py(y));
    }
    svg += "<polyline class=\"series\" data-series=\"" + html_escape(s.name) + "\" data-points=\"" + std::to_string(n) +
           "\" fill=\"none\" stroke=\"" + s.color + "\" points=\"" + pts + "\"/>";
    if (s.markers)
      for (const auto& [x, y] : s.points)
        if (std::isfinite(x) && std::isfinite(y))
          svg += "<circle class=\"marker\" cx=\"" + num(px(x)) + "\" cy=\"" + num(py(y)) + "\" r=\"3\" fill=\"" + s.color + "\"/>";
    if (chart.series.size() > 1) {
      legend_x -= 7.0 * static_cast<double>(s.name.size()) + 26;
      svg += "<rect x=\"" + num(legend_x) + "\" y=\"10\" width=\"12\" height=\"4\" fill=\"" + s.color + "\"/><text class=\"legend\" x=\"" +
             num(legend_x + 16) + "\" y=\"16\">" + html_escape(s.name) + "</text>";
    }
  }
  return svg + "</svg>";
}

std::string render_svg_bars(const std::string& title, const std::vector<std::pair<std::string, double>>& bars) {
  const double w = kW, h = 220, left = 58, bottom = 44, top = 34;
  std::string svg = "<svg class=\"chart\" viewBox=\"0 0 " + num(w, "%.0f") + " " + num(h, "%.0f") +
                    "\" xmlns=\"http://www.w3.org/2000/svg\" role=\"img\" aria-label=\"" + html_escape(title) + "\">";
  svg += "<text class=\"title\" x=\"" + num(left) + "\" y=\"18\">" + html_escape(title) + "</text>";
  double top_value = 0;
  for (const auto& b : bars) top_value = std::max(top_value, b.second);
  if (bars.empty() || top_value <= 0) return svg + "<text class=\"empty\" x=\"" + num(w / 2) + "\" y=\"" + num(h / 2) + "\">no data</text></svg>";
  const double pw = w - left - kRight, ph = h - top - bottom, slot = pw / static_cast<double>(bars.size());
  svg += "<g class=\"grid\">";
  for (const double t : nice_ticks(0, top_value, 4)) {
    const double y = top + ph - t / top_value * ph;
    svg += "<line x1=\"" + num(left) + "\" x2=\"" + num(w - kRight) + "\" y1=\"" + num(y) + "\" y2=\"" + num(y) + "\"/>";
    svg += "<text class=\"ylab\" x=\"" + num(left - 6) + "\" y=\"" + num(y + 4) + "\">" + tick_label(t) + "</text>";
  }
  svg += "</g>";
  for (size_t i = 0; i < bars.size(); ++i) {
    const double bh = bars[i].second / top_value * ph, x = left + slot * static_cast<double>(i);
    svg += "<rect class=\"bar\" x=\"" + num(x + slot * 0.1) + "\" y=\"" + num(top + ph - bh) + "\" width=\"" + num(slot * 0.8) +
           "\" height=\"" + num(bh) + "\"><title>" + html_escape(bars[i].first) + ": " + tick_label(bars[i].second) + "</title></rect>";
    svg += "<text class=\"xlab\" x=\"" + num(x + slot / 2) + "\" y=\"" + num(top + ph + 14) + "\">" + html_escape(bars[i].first) + "</text>";
  }
  svg += "<text class=\"xname\" x=\"" + num(left + pw / 2) + "\" y=\"" + num(h - 6) + "\">tokens per example</text>";
  return svg + "</svg>";
}

}  // namespace qtrain
