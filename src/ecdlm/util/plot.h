// PNG plots through gnuplot (a data file + a script; no gnuplot = a warning, not an error).
#pragma once
#include <string>
#include <vector>

namespace ecdlm {

struct Series {
  // Points suit results that are not a sweep (joining them suggests an order they do not have);
  // lines suit an ordered sweep. Labels, when given (one per point), are drawn beside the points.
  enum class Style { kLines, kPoints, kLinesPoints };
  std::string name;
  std::vector<double> x, y;
  Style style = Style::kLines;
  std::vector<std::string> labels;

  Series() = default;
  Series(std::string name_, std::vector<double> x_, std::vector<double> y_, Style style_ = Style::kLines,
         std::vector<std::string> labels_ = {})
      : name(std::move(name_)), x(std::move(x_)), y(std::move(y_)), style(style_), labels(std::move(labels_)) {}
};

struct PlotSpec {
  std::string title, xlabel, ylabel;
  bool log_y = false;
  std::string key = "top right";  // gnuplot's `set key` position
  bool log_x = false;
};

// Writes `png` (and `png` + ".dat"/".gp" next to it). Returns false if gnuplot is unavailable.
// The .gp script is written before gnuplot is looked for, so it can be checked without gnuplot.
bool plot_lines(const std::string& png, const PlotSpec& spec, const std::vector<Series>& series);

}  // namespace ecdlm
