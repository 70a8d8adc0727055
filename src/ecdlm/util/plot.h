// PNG line plots through gnuplot (a data file + a script; no gnuplot = a warning, not an error).
#pragma once
#include <string>
#include <vector>

namespace ecdlm {

struct Series {
  std::string name;
  std::vector<double> x, y;
};

struct PlotSpec {
  std::string title, xlabel, ylabel;
  bool log_y = false;
};

// Writes `png` (and `png` + ".dat"/".gp" next to it). Returns false if gnuplot is unavailable.
bool plot_lines(const std::string& png, const PlotSpec& spec, const std::vector<Series>& series);

// Standard plots of a run directory's metrics.jsonl into RUN/plots/: training and validation
// loss against step, and validation loss per mask-ratio bin. Returns the files written.
std::vector<std::string> plot_run(const std::string& run_dir);

}  // namespace ecdlm
