#include "ecdlm/util/plot.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <filesystem>
#include <fstream>

#include "ecdlm/util/log.h"

namespace ecdlm {
namespace fs = std::filesystem;

namespace {
// gnuplot string literal: single quotes, a quote doubled.
std::string gp_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("''") : std::string(1, c);
  return out + "'";
}
const char* gp_style(Series::Style s) {
  switch (s) {
    case Series::Style::kPoints: return "points pt 7 ps 1.4";
    case Series::Style::kLinesPoints: return "linespoints lw 2 pt 7 ps 1.4";
    default: return "lines lw 2";
  }
}

// Label heights: a label starts at its point's height and moves up just enough to clear the labels
// already placed that it would overlap (3% of the y span high, about 1.1% of the x span per
// character wide, in the plot's own scale), so points that nearly coincide stay readable.
struct Span {
  double lo = std::numeric_limits<double>::infinity(), hi = -std::numeric_limits<double>::infinity();
  bool log = false;
  double to(double v) const { return log ? std::log10(std::max(v, 1e-300)) : v; }
  double from(double t) const { return log ? std::pow(10.0, t) : t; }
  double width() const { return std::max(to(hi) - to(lo), 1e-9); }
  void add(double v) {
    if (!log || v > 0) lo = std::min(lo, v), hi = std::max(hi, v);
  }
};

std::vector<double> label_heights(const Series& s, const Span& xs, const Span& ys) {
  const size_t n = std::min({s.x.size(), s.y.size(), s.labels.size()});
  const double gap = 0.03 * ys.width();
  std::vector<size_t> order(n);
  for (size_t i = 0; i < n; ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return s.y[a] < s.y[b]; });
  std::vector<double> t_y(n);
  std::vector<size_t> placed;
  for (size_t i : order) {
    const double x0 = xs.to(s.x[i]), x1 = x0 + 0.011 * xs.width() * (static_cast<double>(s.labels[i].size()) + 2);
    double t = ys.to(s.y[i]);
    for (bool moved = true; moved;) {
      moved = false;
      for (size_t j : placed) {
        const double u0 = xs.to(s.x[j]), u1 = u0 + 0.011 * xs.width() * (static_cast<double>(s.labels[j].size()) + 2);
        // Written so that t = t_y[j] + gap is clear of j exactly (|t - t_y[j]| < gap can round).
        if (x1 > u0 && u1 > x0 && t > t_y[j] - gap && t < t_y[j] + gap) {
          t = t_y[j] + gap;
          moved = true;
        }
      }
    }
    t_y[i] = t;
    placed.push_back(i);
  }
  std::vector<double> out(n);
  for (size_t i = 0; i < n; ++i) out[i] = ys.from(t_y[i]);
  return out;
}

}  // namespace

bool plot_lines(const std::string& png, const PlotSpec& spec, const std::vector<Series>& series) {
  const std::string dat = png + ".dat", gp = png + ".gp";
  Span xs, ys;
  xs.log = spec.log_x;
  ys.log = spec.log_y;
  for (const auto& s : series) {
    for (double v : s.x) xs.add(v);
    for (double v : s.y) ys.add(v);
  }
  {
    std::ofstream d(dat);
    for (const auto& s : series) {
      d << "# " << s.name << "\n";
      const auto ly = s.labels.empty() ? std::vector<double>{} : label_heights(s, xs, ys);
      for (size_t i = 0; i < s.x.size() && i < s.y.size(); ++i) {
        d << s.x[i] << " " << s.y[i];
        if (i < ly.size()) d << " \"" << s.labels[i] << "\" " << ly[i];
        d << "\n";
      }
      d << "\n\n";
    }
  }
  {
    std::ofstream g(gp);
    g << "set terminal pngcairo size 900,560 noenhanced\nset output " << gp_quote(png) << "\n"
      << "set title " << gp_quote(spec.title) << "\nset xlabel " << gp_quote(spec.xlabel) << "\nset ylabel "
      << gp_quote(spec.ylabel) << "\nset grid\nset key " << spec.key << "\n";
    if (spec.log_y) g << "set logscale y\n";
    if (spec.log_x) g << "set logscale x\n";
    g << "plot ";
    for (size_t i = 0; i < series.size(); ++i) {
      const auto& s = series[i];
      g << (i ? ", " : "") << gp_quote(dat) << " index " << i << " using 1:2 with " << gp_style(s.style)
        << " lc " << i + 1 << " title " << gp_quote(s.name);
      if (!s.labels.empty())
        g << ", " << gp_quote(dat) << " index " << i
          << " using 1:4:3 with labels left offset 0.8,0 font ',9' tc lt " << i + 1 << " notitle";
    }
    g << "\n";
  }
  if (std::system("command -v gnuplot >/dev/null 2>&1") != 0) {
    LOG_WARN("gnuplot not found: skipping " << png << " (scripts/setup.sh installs gnuplot-nox)");
    return false;
  }
  std::string cmd = "gnuplot '" + gp + "' 2>/dev/null";
  if (std::system(cmd.c_str()) != 0) {
    // pngcairo may be missing; fall back to the plain png terminal.
    std::string fallback = "sed -i 's/pngcairo/png/' '" + gp + "' && gnuplot '" + gp + "'";
    if (std::system(fallback.c_str()) != 0) {
      LOG_WARN("gnuplot failed for " << png);
      return false;
    }
  }
  return true;
}

}  // namespace ecdlm
