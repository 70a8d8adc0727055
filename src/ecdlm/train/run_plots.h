// The standard plots of a training run (gnuplot, util/plot.h).
#pragma once
#include <string>
#include <vector>

namespace ecdlm {

// RUN/plots/ from RUN/metrics.jsonl: training and validation loss against step, and validation loss
// per mask-ratio bin. Returns the files written (none without metrics or gnuplot).
std::vector<std::string> plot_run(const std::string& run_dir);

}  // namespace ecdlm
