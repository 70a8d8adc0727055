// ecdlm plot: PNG plots of run directories' metrics.jsonl, or of a saved `bench generate` result
// (gnuplot).
#include <fstream>
#include <iostream>

#include "commands.h"
#include "ecdlm/bench/generate_plot.h"
#include "ecdlm/util/error.h"
#include "ecdlm/train/run_plots.h"
#include "ecdlm/util/plot.h"

namespace ecdlm::cli {
namespace {

struct PlotArgs {
  std::vector<std::string> runs;
  std::string bench_generate, out;
};

int run(const PlotArgs& a) {
  if (a.runs.empty() && a.bench_generate.empty())
    fail("", "runs", "nothing to plot", "name run directories, or --bench-generate FILE.json --out PNG");
  for (const auto& d : a.runs) {
    auto files = plot_run(d);
    if (files.empty()) fail(d, "metrics.jsonl", "nothing plotted (no metrics, or gnuplot missing)", "");
    for (const auto& f : files) std::cout << f << "\n";
  }
  if (!a.bench_generate.empty()) {
    if (a.out.empty()) fail(a.bench_generate, "--out", "missing", "pass --out PNG");
    std::ifstream in(a.bench_generate);
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(in);
    } catch (const nlohmann::json::exception&) {
      fail(a.bench_generate, "", "is not valid JSON", "write it with `ecdlm bench generate --out-json FILE`");
    }
    const auto rows = bench::rows_from_json(j, a.bench_generate);
    if (!bench::plot_generate(rows, a.out)) fail(a.out, "", "not plotted (gnuplot missing or failed)", "install gnuplot-nox");
    std::cout << a.out << "\n";
  }
  return 0;
}

}  // namespace

void register_plot(CLI::App& app) {
  auto a = std::make_shared<PlotArgs>();
  auto* sub = app.add_subcommand(
      "plot", "Write RUN/plots/*.png (loss, val loss per mask-ratio bin) from metrics.jsonl, or redraw a bench plot");
  sub->add_option("runs", a->runs, "Run directories")->check(CLI::ExistingDirectory);
  sub->add_option("--bench-generate", a->bench_generate, "A `bench generate --out-json` file to plot")
      ->check(CLI::ExistingFile);
  sub->add_option("--out", a->out, "PNG for --bench-generate");
  set_runner(sub, [a] { return run(*a); });
}

}  // namespace ecdlm::cli
