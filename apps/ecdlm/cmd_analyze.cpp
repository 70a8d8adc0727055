// ecdlm analyze: per mask-ratio bin convergence rate eta_b = -d ln L_b / dt of one or more runs
// (spec §6.3), as a markdown table or JSON, optionally with PNG plots.
#include <cmath>
#include <filesystem>
#include <iostream>

#include "commands.h"
#include "ecdlm/eval/efficiency.h"
#include "ecdlm/util/error.h"
#include "ecdlm/util/log.h"
#include "ecdlm/util/plot.h"

namespace ecdlm::cli {
namespace {

struct AnalyzeArgs {
  std::vector<std::string> runs;
  std::string bins = "4", x = "step", plot;
  int64_t smooth = 3;
  double window = 1.0, from = NAN, to = NAN;
  bool json = false;
};

std::string label(const std::string& dir) {
  auto p = std::filesystem::path(dir).lexically_normal();
  if (p.filename().empty()) p = p.parent_path();
  return p.filename().string();
}

void write_plots(const AnalyzeArgs& a, const std::vector<RunCurves>& curves, const std::vector<RunEfficiency>& effs) {
  const std::string xname = a.x;
  std::vector<Series> lines;
  for (const auto& rc : curves)
    for (const auto& b : rc.bins) {
      Series s{label(rc.run_dir) + " r " + std::to_string(b.lo).substr(0, 4) + "-" + std::to_string(b.hi).substr(0, 4), b.x, {}};
      for (double l : b.loss) s.y.push_back(std::log(l));
      lines.push_back(std::move(s));
    }
  // plot_lines writes its .dat/.gp next to the PNG, so the folder must exist; it warns on failure.
  const auto parent = std::filesystem::path(a.plot).parent_path();
  if (!parent.empty()) std::filesystem::create_directories(parent);
  if (plot_lines(a.plot, {"ln validation loss per mask-ratio bin", xname, "ln L", false}, lines))
    std::cout << a.plot << "\n";
  if (effs.size() < 2) return;
  std::string stem = a.plot;
  if (stem.size() > 4 && stem.substr(stem.size() - 4) == ".png") stem.resize(stem.size() - 4);
  const std::string ratio_png = stem + "-ratio.png";
  std::vector<Series> ratios;
  for (size_t r = 1; r < effs.size(); ++r) {
    Series s{label(effs[r].run_dir) + " / " + label(effs[0].run_dir), {}, {}};
    for (size_t b = 0; b < effs[r].bins.size(); ++b) {
      if (!std::isfinite(effs[r].bins[b].eta_over_baseline)) continue;
      s.x.push_back(static_cast<double>(b));
      s.y.push_back(effs[r].bins[b].eta_over_baseline);
    }
    ratios.push_back(std::move(s));
  }
  if (plot_lines(ratio_png, {"eta(run) / eta(" + label(effs[0].run_dir) + ") per bin", "bin index (low r -> high r)",
                             "eta ratio", false},
                 ratios))
    std::cout << ratio_png << "\n";
}

int run(const AnalyzeArgs& a) {
  EfficiencyOptions opt;
  opt.bins = a.bins;
  opt.axis = parse_eff_axis(a.x);
  opt.smooth = a.smooth;
  opt.window = a.window;
  if (std::isfinite(a.from)) opt.x_from = a.from;
  if (std::isfinite(a.to)) opt.x_to = a.to;
  LOG_INFO("analyze: " << a.runs.size() << " run(s), bins " << opt.bins << ", x " << a.x << ", smooth " << opt.smooth
                       << ", fit " << (opt.x_from || opt.x_to
                                           ? "[" + (opt.x_from ? std::to_string(*opt.x_from) : std::string("start")) +
                                                 ", " + (opt.x_to ? std::to_string(*opt.x_to) : std::string("end")) + "]"
                                           : "last " + std::to_string(static_cast<int>(std::lround(opt.window * 100))) +
                                                 "% of each run"));
  std::vector<RunCurves> curves;
  for (const auto& d : a.runs) curves.push_back(load_run_curves(d, opt));
  const auto effs = analyze_runs(curves, opt);
  if (a.json)
    std::cout << efficiency_json(effs, opt).dump(2) << std::endl;
  else
    std::cout << efficiency_markdown(effs, opt);
  if (!a.plot.empty()) write_plots(a, curves, effs);
  return 0;
}

}  // namespace

void register_analyze(CLI::App& app) {
  auto a = std::make_shared<AnalyzeArgs>();
  auto* sub = app.add_subcommand("analyze", "Per mask-ratio bin convergence rate eta = -d ln L / dt of runs (first = baseline)");
  sub->add_option("runs", a->runs, "Run directories with metrics.jsonl; the first is the baseline")->required();
  sub->add_option("--bins", a->bins, "Which val_per_bin set (number of r bins)")->capture_default_str();
  sub->add_option("--x", a->x, "t axis: step, tokens or elapsed_s")->capture_default_str()
      ->check(CLI::IsMember({"step", "tokens", "elapsed_s"}));
  sub->add_option("--smooth", a->smooth, "Centered moving average of ln L over this many points (1 = none)")
      ->capture_default_str()->check(CLI::PositiveNumber);
  sub->add_option("--window", a->window, "Fit over the last fraction of each run")->capture_default_str()
      ->check(Finite)->check(CLI::Range(1e-9, 1.0));
  sub->add_option("--from", a->from, "Fit from this x (overrides --window)");
  sub->add_option("--to", a->to, "Fit up to this x");
  sub->add_flag("--json", a->json, "Print JSON");
  sub->add_option("--plot", a->plot, "Write ln L per bin to this PNG (and -ratio.png with >= 2 runs)");
  set_runner(sub, [a] { return run(*a); });
}

}  // namespace ecdlm::cli
