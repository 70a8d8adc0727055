// Learning-efficiency analysis (spec §6.3): per mask-ratio bin b, the convergence rate
// eta_b = -d ln L_b / dt of the validation loss, from a run directory's metrics.jsonl.
#pragma once
#include <nlohmann/json.hpp>

#include <optional>
#include <string>
#include <vector>

namespace ecdlm {

// What t is: optimizer step, training tokens seen, or wall-clock seconds.
enum class EffAxis { kStep, kTokens, kElapsed };
EffAxis parse_eff_axis(const std::string& s);  // "step" | "tokens" | "elapsed_s"
std::string eff_axis_name(EffAxis a);

struct EfficiencyOptions {
  std::string bins = "4";          // key of val_per_bin (number of equal r bins)
  EffAxis axis = EffAxis::kStep;
  int64_t smooth = 3;              // centered moving-average width in points (1 = none)
  double window = 1.0;             // fit over the last `window` fraction of each run's x range
  std::optional<double> x_from;    // explicit fit range [x_from, x_to]; overrides `window`
  std::optional<double> x_to;
};

// One bin's validation loss series; points where the bin was empty (count 0) are left out.
struct BinCurve {
  double lo = 0, hi = 0;
  std::vector<double> x, loss;
};

struct RunCurves {
  std::string run_dir;
  std::vector<BinCurve> bins;      // ascending r
};

// Reads RUN_DIR/metrics.jsonl. UserError: no file, no validation lines, < 3 points, no such bins.
RunCurves load_run_curves(const std::string& run_dir, const EfficiencyOptions& opt);

// Centered moving average of width `width` whose half-width shrinks symmetrically at the ends,
// so a linear series stays exactly linear.
std::vector<double> centered_moving_average(const std::vector<double>& v, int64_t width);

// -slope of the least-squares line through (x, ln loss) after smoothing, over x in [x_from, x_to].
// Returns the number of points fitted through `n_fit` (UserError if fewer than 2).
double fit_eta(const std::vector<double>& x, const std::vector<double>& loss, int64_t smooth,
               double x_from, double x_to, int64_t* n_fit = nullptr);

struct BinEfficiency {
  double lo = 0, hi = 0;
  double final_loss = 0;           // last raw validation loss of the bin
  double eta = 0;                  // per x unit
  double eta_over_high = 0;        // eta / eta of the highest-r bin (NaN when that is 0)
  double eta_over_baseline = 0;    // eta / eta of the same bin in the first run (NaN for one run)
  int64_t points = 0;              // points in the fit
};

struct RunEfficiency {
  std::string run_dir;
  double fit_from = 0, fit_to = 0; // x range actually used
  std::vector<BinEfficiency> bins;
};

RunEfficiency analyze_run(const RunCurves& curves, const EfficiencyOptions& opt);

// Analyzes every run and fills eta_over_baseline against runs[0]. UserError if bin edges differ.
std::vector<RunEfficiency> analyze_runs(const std::vector<RunCurves>& runs, const EfficiencyOptions& opt);

nlohmann::json efficiency_json(const std::vector<RunEfficiency>& runs, const EfficiencyOptions& opt);
// Rows = bins; per run: final loss, eta per 1000 x units, eta / eta(highest r) [, eta / eta(first run)].
std::string efficiency_markdown(const std::vector<RunEfficiency>& runs, const EfficiencyOptions& opt);

}  // namespace ecdlm
