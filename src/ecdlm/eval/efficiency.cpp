#include "ecdlm/eval/efficiency.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <numeric>
#include <sstream>

#include "ecdlm/train/metrics.h"
#include "ecdlm/util/error.h"

namespace fs = std::filesystem;

namespace ecdlm {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

std::string fmt(double v, const char* f = "%.4g") {
  if (!std::isfinite(v)) return "n/a";
  char buf[64];
  std::snprintf(buf, sizeof(buf), f, v);
  return buf;
}

std::string run_label(const std::string& dir) {
  fs::path p = fs::path(dir).lexically_normal();
  if (p.filename().empty()) p = p.parent_path();
  return p.filename().empty() ? dir : p.filename().string();
}

std::string available_bins(const nlohmann::json& per_bin) {
  std::string s;
  for (auto it = per_bin.begin(); it != per_bin.end(); ++it) s += (s.empty() ? "" : ", ") + it.key();
  return s.empty() ? "none" : s;
}

double ratio(double num, double den) { return den != 0.0 ? num / den : kNaN; }

}  // namespace

EffAxis parse_eff_axis(const std::string& s) {
  if (s == "step") return EffAxis::kStep;
  if (s == "tokens") return EffAxis::kTokens;
  if (s == "elapsed_s") return EffAxis::kElapsed;
  fail("", "--x", "unknown axis '" + s + "'", "use step, tokens or elapsed_s");
}

std::string eff_axis_name(EffAxis a) {
  switch (a) {
    case EffAxis::kStep: return "step";
    case EffAxis::kTokens: return "tokens";
    case EffAxis::kElapsed: return "elapsed_s";
  }
  return "step";
}

RunCurves load_run_curves(const std::string& run_dir, const EfficiencyOptions& opt) {
  const std::string path = (fs::path(run_dir) / "metrics.jsonl").string();
  if (!fs::exists(path)) fail(path, "", "no metrics.jsonl in the run directory", "pass a directory written by `ecdlm train`");
  std::vector<nlohmann::json> val;
  for (auto& j : read_metrics(path))
    if (j.contains("val_loss")) val.push_back(std::move(j));
  if (val.empty()) fail(path, "val_loss", "no validation lines", "train with validation enabled");
  if (val.size() < 3)
    fail(path, "val_loss", "only " + std::to_string(val.size()) + " validation points; a rate needs at least 3",
         "train longer or validate more often");
  const std::string xkey = eff_axis_name(opt.axis);
  // Lines are in step order already; sorting guards hand-merged logs.
  std::stable_sort(val.begin(), val.end(), [&](const auto& a, const auto& b) {
    return a.value(xkey, 0.0) < b.value(xkey, 0.0);
  });

  RunCurves rc;
  rc.run_dir = run_dir;
  for (size_t li = 0; li < val.size(); ++li) {
    const auto& j = val[li];
    const std::string where = "validation line at step " + std::to_string(j.value("step", int64_t{-1}));
    if (!j.contains(xkey) || !j[xkey].is_number()) fail(path, xkey, where + " has no " + xkey, "pick another --x");
    if (!j.contains("val_per_bin") || !j["val_per_bin"].contains(opt.bins))
      fail(path, "val_per_bin." + opt.bins, where + " has no " + opt.bins + "-bin losses (has: " +
               available_bins(j.value("val_per_bin", nlohmann::json::object())) + ")",
           "pick --bins from those");
    const auto& arr = j["val_per_bin"][opt.bins];
    if (li == 0) {
      for (const auto& b : arr) rc.bins.push_back({b.at("lo").get<double>(), b.at("hi").get<double>(), {}, {}});
    } else if (arr.size() != rc.bins.size()) {
      fail(path, "val_per_bin." + opt.bins, where + " has " + std::to_string(arr.size()) + " bins, earlier lines " +
               std::to_string(rc.bins.size()), "");
    }
    const double x = j[xkey].get<double>();
    for (size_t b = 0; b < arr.size(); ++b) {
      const double loss = arr[b].value("loss", kNaN);
      // An empty bin (count 0) has no loss to speak of; ln needs a positive value.
      if (arr[b].value("count", int64_t{1}) <= 0 || !std::isfinite(loss) || loss <= 0) continue;
      rc.bins[b].x.push_back(x);
      rc.bins[b].loss.push_back(loss);
    }
  }
  for (const auto& b : rc.bins)
    if (b.x.size() < 3)
      fail(path, "val_per_bin." + opt.bins, "bin [" + fmt(b.lo) + ", " + fmt(b.hi) + ") has only " +
               std::to_string(b.x.size()) + " non-empty validation points; need at least 3",
           "validate on more sequences or use fewer bins");
  return rc;
}

std::vector<double> centered_moving_average(const std::vector<double>& v, int64_t width) {
  const int64_t n = static_cast<int64_t>(v.size()), half = std::max<int64_t>(width, 1) / 2;
  std::vector<double> out(v.size());
  for (int64_t i = 0; i < n; ++i) {
    const int64_t h = std::min({half, i, n - 1 - i});
    double s = 0;
    for (int64_t k = i - h; k <= i + h; ++k) s += v[k];
    out[i] = s / static_cast<double>(2 * h + 1);
  }
  return out;
}

double fit_eta(const std::vector<double>& x, const std::vector<double>& loss, int64_t smooth,
               double x_from, double x_to, int64_t* n_fit) {
  std::vector<double> lnl(loss.size());
  for (size_t i = 0; i < loss.size(); ++i) lnl[i] = std::log(loss[i]);
  // x is smoothed with the same kernel so uneven spacing (e.g. a last eval at the final step)
  // does not bias the slope: the average of points on a line lies on that line.
  const auto xs = centered_moving_average(x, smooth), ys = centered_moving_average(lnl, smooth);
  std::vector<double> fx, fy;
  for (size_t i = 0; i < x.size(); ++i)
    if (x[i] >= x_from && x[i] <= x_to) fx.push_back(xs[i]), fy.push_back(ys[i]);
  if (n_fit) *n_fit = static_cast<int64_t>(fx.size());
  const double n = static_cast<double>(fx.size());
  if (fx.size() < 2)
    fail("", "--from/--to/--window", "only " + std::to_string(fx.size()) + " validation point(s) in [" + fmt(x_from) +
             ", " + fmt(x_to) + "]; a slope needs at least 2", "widen the fit range");
  const double mx = std::accumulate(fx.begin(), fx.end(), 0.0) / n;
  const double my = std::accumulate(fy.begin(), fy.end(), 0.0) / n;
  double sxx = 0, sxy = 0;
  for (size_t i = 0; i < fx.size(); ++i) sxx += (fx[i] - mx) * (fx[i] - mx), sxy += (fx[i] - mx) * (fy[i] - my);
  if (sxx <= 0) fail("", "--from/--to", "all fitted points have the same x", "widen the fit range");
  return -sxy / sxx;
}

RunEfficiency analyze_run(const RunCurves& curves, const EfficiencyOptions& opt) {
  if (!(opt.window > 0 && opt.window <= 1)) fail("", "--window", "must be in (0, 1]", "");
  if (opt.smooth < 1) fail("", "--smooth", "must be >= 1", "use 1 for no smoothing");
  double xmin = std::numeric_limits<double>::infinity(), xmax = -xmin;
  for (const auto& b : curves.bins) xmin = std::min(xmin, b.x.front()), xmax = std::max(xmax, b.x.back());
  RunEfficiency re;
  re.run_dir = curves.run_dir;
  re.fit_from = opt.x_from ? *opt.x_from : xmax - opt.window * (xmax - xmin);
  re.fit_to = opt.x_to ? *opt.x_to : xmax;
  if (re.fit_to <= re.fit_from)
    fail(curves.run_dir, "--from/--to", "empty fit range [" + fmt(re.fit_from) + ", " + fmt(re.fit_to) + "]", "");
  for (const auto& b : curves.bins) {
    BinEfficiency be;
    be.lo = b.lo, be.hi = b.hi, be.final_loss = b.loss.back(), be.eta_over_baseline = kNaN;
    be.eta = fit_eta(b.x, b.loss, opt.smooth, re.fit_from, re.fit_to, &be.points);
    re.bins.push_back(be);
  }
  const double eta_high = re.bins.empty() ? kNaN : re.bins.back().eta;
  for (auto& be : re.bins) be.eta_over_high = ratio(be.eta, eta_high);
  return re;
}

std::vector<RunEfficiency> analyze_runs(const std::vector<RunCurves>& runs, const EfficiencyOptions& opt) {
  std::vector<RunEfficiency> out;
  for (const auto& rc : runs) {
    if (!out.empty()) {
      const auto& base = runs.front().bins;
      bool same = rc.bins.size() == base.size();
      for (size_t b = 0; same && b < base.size(); ++b)
        same = std::abs(rc.bins[b].lo - base[b].lo) < 1e-9 && std::abs(rc.bins[b].hi - base[b].hi) < 1e-9;
      if (!same)
        fail(rc.run_dir, "val_per_bin." + opt.bins, "bin edges differ from " + runs.front().run_dir,
             "compare runs evaluated with the same bins");
    }
    out.push_back(analyze_run(rc, opt));
  }
  if (out.size() >= 2)
    for (auto& re : out)
      for (size_t b = 0; b < re.bins.size(); ++b) re.bins[b].eta_over_baseline = ratio(re.bins[b].eta, out[0].bins[b].eta);
  return out;
}

nlohmann::json efficiency_json(const std::vector<RunEfficiency>& runs, const EfficiencyOptions& opt) {
  nlohmann::json j = {{"x", eff_axis_name(opt.axis)}, {"bins", opt.bins}, {"smooth", opt.smooth}, {"window", opt.window}};
  j["runs"] = nlohmann::json::array();
  for (const auto& re : runs) {
    nlohmann::json bins = nlohmann::json::array();
    for (const auto& b : re.bins) {
      // NaN ratios (zero denominator) serialize as null.
      nlohmann::json row = {{"lo", b.lo}, {"hi", b.hi}, {"final_loss", b.final_loss}, {"eta", b.eta},
                            {"eta_per_1000", b.eta * 1000}, {"eta_over_high", b.eta_over_high}, {"points", b.points}};
      if (runs.size() >= 2) row["eta_over_baseline"] = b.eta_over_baseline;
      bins.push_back(row);
    }
    j["runs"].push_back({{"run", re.run_dir}, {"fit_from", re.fit_from}, {"fit_to", re.fit_to}, {"bins", bins}});
  }
  return j;
}

std::string efficiency_markdown(const std::vector<RunEfficiency>& runs, const EfficiencyOptions& opt) {
  if (runs.empty()) return "";
  const bool cmp = runs.size() >= 2;
  const std::string unit = "η per 1k " + (opt.axis == EffAxis::kStep ? std::string("steps") : eff_axis_name(opt.axis));
  std::ostringstream os;
  os << "| r bin |";
  std::string sep = "|---|";
  for (const auto& re : runs) {
    const std::string n = run_label(re.run_dir);
    os << " " << n << ": final loss | " << n << ": " << unit << " | " << n << ": η/η(high r) |";
    sep += "---|---|---|";
    if (cmp) os << " " << n << ": η/η(" << run_label(runs[0].run_dir) << ") |", sep += "---|";
  }
  os << "\n" << sep << "\n";
  for (size_t b = 0; b < runs[0].bins.size(); ++b) {
    const auto& r0 = runs[0].bins[b];
    os << "| [" << fmt(r0.lo, "%.3g") << ", " << fmt(r0.hi, "%.3g") << (b + 1 == runs[0].bins.size() ? "]" : ")") << " |";
    for (const auto& re : runs) {
      const auto& be = re.bins[b];
      os << " " << fmt(be.final_loss, "%.4f") << " | " << fmt(be.eta * 1000) << " | " << fmt(be.eta_over_high, "%.3f") << " |";
      if (cmp) os << " " << fmt(be.eta_over_baseline, "%.3f") << " |";
    }
    os << "\n";
  }
  return os.str();
}

}  // namespace ecdlm
