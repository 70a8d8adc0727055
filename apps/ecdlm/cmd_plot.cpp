// ecdlm plot: PNG plots of one or more run directories' metrics.jsonl (gnuplot).
#include <iostream>

#include "commands.h"
#include "ecdlm/util/error.h"
#include "ecdlm/util/plot.h"

namespace ecdlm::cli {

void register_plot(CLI::App& app) {
  auto dirs = std::make_shared<std::vector<std::string>>();
  auto* sub = app.add_subcommand("plot", "Write RUN/plots/*.png (loss, val loss per mask-ratio bin) from metrics.jsonl");
  sub->add_option("runs", *dirs, "Run directories")->required()->check(CLI::ExistingDirectory);
  set_runner(sub, [dirs] {
    for (const auto& d : *dirs) {
      auto files = plot_run(d);
      if (files.empty()) fail(d, "metrics.jsonl", "nothing plotted (no metrics, or gnuplot missing)", "");
      for (const auto& f : files) std::cout << f << "\n";
    }
    return 0;
  });
}

}  // namespace ecdlm::cli
