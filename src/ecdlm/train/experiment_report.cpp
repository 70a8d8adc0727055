// The experiment report: per-variant aggregates over seeds, time to a target loss, load balance,
// per-bin learning efficiency and capacity, decode cost; markdown + JSON + PNG plots.
#include <cmath>
#include <filesystem>
#include <iomanip>
#include <map>
#include <sstream>

#include "ecdlm/eval/efficiency.h"
#include "ecdlm/model/moe_dlm.h"
#include "ecdlm/train/experiment.h"
#include "ecdlm/train/metrics.h"
#include "ecdlm/util/fs.h"
#include "ecdlm/util/log.h"
#include "ecdlm/util/plot.h"

namespace ecdlm {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

struct Stat {
  double mean = NAN, std = NAN;
  int64_t n = 0;
};

Stat stat_of(const std::vector<double>& v) {
  Stat s;
  std::vector<double> ok;
  for (double x : v)
    if (std::isfinite(x)) ok.push_back(x);
  s.n = static_cast<int64_t>(ok.size());
  if (ok.empty()) return s;
  double sum = 0;
  for (double x : ok) sum += x;
  s.mean = sum / static_cast<double>(ok.size());
  if (ok.size() > 1) {
    double sq = 0;
    for (double x : ok) sq += (x - s.mean) * (x - s.mean);
    s.std = std::sqrt(sq / static_cast<double>(ok.size() - 1));  // sample std over seeds
  }
  return s;
}

std::string fmt(double v, int prec) {
  if (!std::isfinite(v)) return "–";
  std::ostringstream o;
  o << std::fixed << std::setprecision(prec) << v;
  return o.str();
}

std::string fmt_pm(const Stat& s, int prec) {
  if (s.n == 0) return "–";
  return fmt(s.mean, prec) + (std::isfinite(s.std) ? " ± " + fmt(s.std, prec) : "");
}

json stat_json(const Stat& s) { return {{"mean", s.mean}, {"std", s.std}, {"n", s.n}}; }

// Validation points and training-log lines of one run.
struct RunSeries {
  std::vector<double> train_s, cpu_s, tokens, val_loss, cv_tokens, load_cv, drop_rate;
  json last_val;  // the last validation line (per-bin loss and capacity)
};

RunSeries read_series(const std::string& run_dir) {
  RunSeries s;
  const auto path = (fs::path(run_dir) / "metrics.jsonl").string();
  if (!fs::exists(path)) return s;
  for (const auto& l : read_metrics(path)) {
    if (l.contains("val_loss")) {
      s.train_s.push_back(l.value("train_s", l.value("elapsed_s", 0.0)));
      s.cpu_s.push_back(l.value("cpu_s", s.train_s.back()));
      s.tokens.push_back(l.value("tokens", 0.0));
      s.val_loss.push_back(l["val_loss"].get<double>());
      s.last_val = l;
    } else if (l.contains("routing")) {
      s.cv_tokens.push_back(l.value("tokens", 0.0));
      s.load_cv.push_back(l["routing"].value("load_cv", NAN));
      s.drop_rate.push_back(l["routing"].value("drop_rate", NAN));
    }
  }
  return s;
}

// First time the validation loss reaches `target`, linearly interpolated between evals; NaN if never.
double time_to_target(const RunSeries& s, const std::vector<double>& t, double target) {
  for (size_t i = 0; i < s.val_loss.size(); ++i) {
    if (s.val_loss[i] > target) continue;
    if (i == 0) return t[0];
    const double f = (s.val_loss[i - 1] - target) / (s.val_loss[i - 1] - s.val_loss[i]);
    return t[i - 1] + f * (t[i] - t[i - 1]);
  }
  return NAN;
}

double mean_second_half(const std::vector<double>& v) {
  std::vector<double> tail(v.begin() + static_cast<std::ptrdiff_t>(v.size() / 2), v.end());
  return stat_of(tail).mean;
}

// Model FLOPs per generated token when all L positions of a sequence are decoded one token per
// forward without a KV cache: forward s sees r = (L - s) / L masked; EC spends k(r) experts per
// token through its schedule's capacity, TC spends its top-k.
double decode_flops_per_token(const ModelConfig& c, int64_t L) {
  if (c.router_type != RouterType::kExpertChoice) return static_cast<double>(L) * forward_flops_per_token(c, L);
  auto sched = make_schedule(c);
  auto r_B = torch::arange(1, L + 1, torch::kFloat32) / static_cast<double>(L);
  auto cap_B = sched.capacity(r_B, L, c.num_experts).to(torch::kFloat64);
  double total = 0;
  for (int64_t s = 0; s < L; ++s) {
    const double k = cap_B[s].item<double>() * static_cast<double>(c.num_experts) / static_cast<double>(L);
    total += forward_flops_per_token(c, L, k);
  }
  return total;
}

std::string router_desc(const ModelConfig& c) {
  if (c.router_type == RouterType::kExpertChoice) return "EC " + c.moe_capacity_schedule;
  std::string d = "TC";
  d += c.moe_capacity_factor > 0 ? " cf " + fmt(c.moe_capacity_factor, 2) : " dropless";
  if (c.moe_aux_loss_coeff > 0) d += ", aux " + fmt(c.moe_aux_loss_coeff, 3);
  if (c.moe_loss_free_bias_rate > 0) d += ", loss-free bias";
  return d;
}

}  // namespace

json write_experiment_report(const ExperimentSpec& spec, const std::vector<ExperimentRun>& runs,
                             const std::string& command) {
  const fs::path out = spec.results_dir;
  fs::create_directories(out / "runs");
  std::map<std::string, std::vector<const ExperimentRun*>> by_variant;
  std::map<const ExperimentRun*, RunSeries> series;
  for (const auto& r : runs) {
    if (r.result.is_null()) continue;
    by_variant[r.variant].push_back(&r);
    series[&r] = read_series(r.run_dir);
    // Keep each run's metrics and config with the results so the report stands alone.
    const auto dst = out / "runs" / (r.variant + "-seed" + std::to_string(r.seed));
    fs::create_directories(dst);
    for (const char* f : {"metrics.jsonl", "train_config.json", "result.json"})
      if (fs::exists(fs::path(r.run_dir) / f))
        fs::copy_file(fs::path(r.run_dir) / f, dst / f, fs::copy_options::overwrite_existing);
  }

  // Target loss: explicit, or the target variant's mean final validation loss.
  double target = spec.target_loss;
  if (!std::isfinite(target) && by_variant.count(spec.target_variant)) {
    std::vector<double> v;
    for (const auto* r : by_variant[spec.target_variant]) v.push_back(r->result.value("final_val_loss", NAN));
    target = stat_of(v).mean;
  }
  double baseline_time = NAN, baseline_cpu = NAN;
  if (by_variant.count(spec.baseline)) {
    std::vector<double> v, c;
    for (const auto* r : by_variant[spec.baseline]) {
      v.push_back(r->result.value("train_seconds", NAN));
      c.push_back(r->result.value("cpu_seconds", NAN));
    }
    baseline_time = stat_of(v).mean;
    baseline_cpu = stat_of(c).mean;
  }

  // Per-bin efficiency (eta over training tokens, the compute-fair axis for matched FLOPs).
  EfficiencyOptions eopt;
  eopt.axis = EffAxis::kTokens;
  eopt.window = 1.0;
  std::map<std::string, std::vector<std::vector<double>>> eta_runs;  // variant -> per seed -> per bin
  std::vector<double> bin_lo, bin_hi;
  std::string eta_note;
  for (const auto& [name, rs] : by_variant)
    for (const auto* r : rs) {
      try {
        auto eff = analyze_run(load_run_curves(r->run_dir, eopt), eopt);
        std::vector<double> etas;
        bin_lo.clear();
        bin_hi.clear();
        for (const auto& b : eff.bins) etas.push_back(b.eta), bin_lo.push_back(b.lo), bin_hi.push_back(b.hi);
        eta_runs[name].push_back(etas);
      } catch (const std::exception& e) {
        eta_note = e.what();
      }
    }

  json jv = json::array();
  std::ostringstream md;
  md << "# Experiment: " << spec.name << "\n\n";
  if (!spec.description.empty()) md << spec.description << "\n\n";
  md << "Reproduce: `" << command << "`\n\n";
  md << "Budget: " << fmt(spec.budget, 0) << " " << spec.budget_kind << " per run; seeds:";
  for (auto s : spec.seeds) md << " " << s;
  md << "; base config `" << spec.base << "`; mean ± sample std over seeds.\n";
  md << "Times are of the optimizer steps only (evaluations excluded), two ways: wall-clock seconds, and "
        "CPU seconds / threads, which stays comparable when other jobs share the machine. Target loss "
     << fmt(target, 4) << (spec.target_variant.empty() ? " (given)" : " (mean final val loss of " + spec.target_variant + ")")
     << "; the time-to-target ratio divides by " << spec.baseline << "'s mean full training time ("
     << fmt(baseline_time, 0) << " s wall, " << fmt(baseline_cpu, 0) << " s CPU).\n\n";
  md << "| variant | router | E[k] | seeds | final val loss | val PPL | tokens/s (wall) | train s (wall / CPU) | "
        "time to target (wall / CPU s) | ÷ " << spec.baseline << " time (wall / CPU) | load CV | decode GFLOP/token |\n";
  md << "|---|---|---|---|---|---|---|---|---|---|---|---|\n";
  for (const auto& v : spec.variants) {
    if (!by_variant.count(v.name)) continue;
    const auto& rs = by_variant[v.name];
    const ModelConfig& c = rs.front()->cfg;
    std::vector<double> loss, ppl, tps, secs, cpus, ttt, tttc, cv, drop;
    int64_t reached = 0, diverged = 0;
    for (const auto* r : rs) {
      loss.push_back(r->result.value("final_val_loss", NAN));
      ppl.push_back(r->result.value("final_val_ppl", NAN));
      tps.push_back(r->result.value("tokens_per_s", NAN));
      secs.push_back(r->result.value("train_seconds", NAN));
      cpus.push_back(r->result.value("cpu_seconds", NAN));
      diverged += r->result.value("diverged", false) ? 1 : 0;
      const auto& s = series[r];
      const double t = std::isfinite(target) ? time_to_target(s, s.train_s, target) : NAN;
      reached += std::isfinite(t) ? 1 : 0;
      ttt.push_back(t);
      tttc.push_back(std::isfinite(target) ? time_to_target(s, s.cpu_s, target) : NAN);
      cv.push_back(mean_second_half(s.load_cv));
      drop.push_back(mean_second_half(s.drop_rate));
    }
    const double ek = c.router_type == RouterType::kExpertChoice ? make_schedule(c).expected_k(rs.front()->params.seq_len)
                                                                 : static_cast<double>(c.num_experts_per_tok);
    const double dflops = decode_flops_per_token(c, rs.front()->params.seq_len);
    const Stat sl = stat_of(loss), sp = stat_of(ppl), st = stat_of(tps), ss = stat_of(secs), scpu = stat_of(cpus),
               stt = stat_of(ttt), sttc = stat_of(tttc), sc = stat_of(cv), sd = stat_of(drop);
    const double ratio = stt.mean / baseline_time, ratio_cpu = sttc.mean / baseline_cpu;
    const bool all_reached = reached == static_cast<int64_t>(rs.size());
    md << "| " << v.name << (diverged ? " (" + std::to_string(diverged) + " diverged)" : "") << " | " << router_desc(c)
       << (rs.front()->params.trainable != "all" ? ", trains " + rs.front()->params.trainable : "") << " | " << fmt(ek, 3) << " | " << rs.size() << " | " << fmt_pm(sl, 4) << " | " << fmt_pm(sp, 1) << " | "
       << fmt_pm(st, 0) << " | " << fmt_pm(ss, 1) << " / " << fmt_pm(scpu, 1) << " | "
       << (all_reached ? fmt_pm(stt, 1) + " / " + fmt_pm(sttc, 1)
                       : std::to_string(reached) + "/" + std::to_string(rs.size()) + " reached")
       << " | " << (all_reached ? fmt(ratio, 2) + "x / " + fmt(ratio_cpu, 2) + "x" : "–") << " | " << fmt_pm(sc, 3)
       << (sd.mean > 0 ? " (drop " + fmt(100 * sd.mean, 1) + "%)" : "") << " | " << fmt(dflops / 1e9, 3) << " |\n";
    json e = {{"variant", v.name}, {"router", router_desc(c)}, {"expected_k", ek}, {"seeds", rs.size()},
              {"final_val_loss", stat_json(sl)}, {"final_val_ppl", stat_json(sp)}, {"tokens_per_s", stat_json(st)},
              {"train_seconds", stat_json(ss)}, {"cpu_seconds", stat_json(scpu)}, {"time_to_target_s", stat_json(stt)},
              {"time_to_target_cpu_s", stat_json(sttc)}, {"reached_target", reached},
              {"time_to_target_ratio", all_reached ? ratio : NAN}, {"time_to_target_ratio_cpu", all_reached ? ratio_cpu : NAN}, {"load_cv", stat_json(sc)}, {"drop_rate", stat_json(sd)},
              {"decode_flops_per_token", dflops}, {"diverged", diverged}};
    if (eta_runs.count(v.name)) {
      json bins = json::array();
      for (size_t b = 0; b < bin_lo.size(); ++b) {
        std::vector<double> etas;
        for (const auto& er : eta_runs[v.name])
          if (b < er.size()) etas.push_back(er[b]);
        bins.push_back({{"lo", bin_lo[b]}, {"hi", bin_hi[b]}, {"eta_per_mtok", stat_json(stat_of(etas))}});
      }
      e["eta"] = bins;
    }
    // Per-bin loss and the capacity actually used (last validation of each seed, averaged).
    if (!rs.empty() && series[rs.front()].last_val.contains("val_per_bin")) {
      json per_bin = json::array();
      const auto& first = series[rs.front()].last_val["val_per_bin"]["4"];
      for (size_t b = 0; b < first.size(); ++b) {
        std::vector<double> l, cap, k;
        for (const auto* r : rs) {
          const auto& lv = series[r].last_val;
          if (!lv.contains("val_per_bin") || !lv["val_per_bin"].contains("4")) continue;
          const auto& bj = lv["val_per_bin"]["4"][b];
          if (bj.value("count", 0) == 0) continue;  // no validation sequence fell in this bin
          l.push_back(bj.value("loss", NAN));
          cap.push_back(bj.value("capacity", NAN));
          k.push_back(bj.value("k", NAN));
        }
        per_bin.push_back({{"lo", first[b]["lo"]}, {"hi", first[b]["hi"]}, {"loss", stat_of(l).mean},
                           {"capacity", stat_of(cap).mean}, {"k", stat_of(k).mean}});
      }
      e["val_per_bin"] = per_bin;
    }
    jv.push_back(e);
  }

  // Per-bin tables: efficiency and the capacity actually used.
  if (!bin_lo.empty()) {
    md << "\n## Learning efficiency per mask-ratio bin\n\n"
       << "η = −d ln L_r / d(tokens), per million training tokens, least squares over each run's validation "
          "points (3-point smoothing), mean over seeds; in brackets the ratio to the highest-r bin.\n\n| variant |";
    for (size_t b = 0; b < bin_lo.size(); ++b) md << " r∈[" << fmt(bin_lo[b], 2) << "," << fmt(bin_hi[b], 2) << ") |";
    md << "\n|---|";
    for (size_t b = 0; b < bin_lo.size(); ++b) md << "---|";
    md << "\n";
    for (const auto& e : jv) {
      if (!e.contains("eta")) continue;
      md << "| " << e["variant"].get<std::string>() << " |";
      const double hi = e["eta"].back()["eta_per_mtok"]["mean"].get<double>();
      for (const auto& b : e["eta"]) {
        const double m = b["eta_per_mtok"]["mean"].get<double>();
        md << " " << fmt(m * 1e6, 3) << " (" << fmt(m / hi, 2) << "x) |";
      }
      md << "\n";
    }
  } else if (!eta_note.empty()) {
    md << "\nNo per-bin efficiency: " << eta_note << "\n";
  }
  md << "\n## Final validation loss and capacity used per mask-ratio bin\n\n"
        "Loss per bin; for expert choice also the mean capacity C per sequence and the experts per token it buys "
        "(k = C·E/L), as measured in the last validation pass.\n\n| variant | bin | loss | C | k |\n|---|---|---|---|---|\n";
  for (const auto& e : jv) {
    if (!e.contains("val_per_bin")) continue;
    for (const auto& b : e["val_per_bin"])
      md << "| " << e["variant"].get<std::string>() << " | [" << fmt(b["lo"].get<double>(), 2) << ", "
         << fmt(b["hi"].get<double>(), 2) << ") | " << fmt(b["loss"].get<double>(), 4) << " | "
         << fmt(b["capacity"].is_number() ? b["capacity"].get<double>() : NAN, 1) << " | "
         << fmt(b["k"].is_number() ? b["k"].get<double>() : NAN, 2) << " |\n";
  }

  // Plots: one line per run.
  std::vector<Series> vs_time, vs_cpu, vs_tokens, cv_lines, eta_lines;
  for (const auto& v : spec.variants) {
    if (!by_variant.count(v.name)) continue;
    for (const auto* r : by_variant[v.name]) {
      const auto& s = series[r];
      const std::string name = v.name + " s" + std::to_string(r->seed);
      vs_time.push_back({name, s.train_s, s.val_loss});
      vs_cpu.push_back({name, s.cpu_s, s.val_loss});
      vs_tokens.push_back({name, s.tokens, s.val_loss});
      std::vector<double> cvx, cvy;
      for (size_t i = 0; i < s.load_cv.size(); ++i)
        if (std::isfinite(s.load_cv[i])) cvx.push_back(s.cv_tokens[i]), cvy.push_back(s.load_cv[i]);
      cv_lines.push_back({name, cvx, cvy});
    }
  }
  for (const auto& e : jv) {
    if (!e.contains("eta")) continue;
    Series s{e["variant"].get<std::string>(), {}, {}};
    for (const auto& b : e["eta"]) {
      s.x.push_back(0.5 * (b["lo"].get<double>() + b["hi"].get<double>()));
      s.y.push_back(b["eta_per_mtok"]["mean"].get<double>() * 1e6);
    }
    eta_lines.push_back(std::move(s));
  }
  std::vector<std::string> pngs;
  auto plot = [&](const std::string& file, const PlotSpec& p, const std::vector<Series>& lines) {
    if (!lines.empty() && plot_lines((out / file).string(), p, lines)) pngs.push_back(file);
  };
  plot("val_loss_vs_time.png", {spec.name + ": validation loss vs training time", "training seconds", "val ELBO loss", false}, vs_time);
  plot("val_loss_vs_cpu_time.png", {spec.name + ": validation loss vs CPU time / threads", "CPU seconds / threads", "val ELBO loss", false}, vs_cpu);
  plot("val_loss_vs_tokens.png", {spec.name + ": validation loss vs tokens", "training tokens", "val ELBO loss", false}, vs_tokens);
  plot("efficiency_per_bin.png", {spec.name + ": eta per mask-ratio bin", "mask ratio r (bin centre)", "eta per M tokens", false}, eta_lines);
  plot("load_balance.png", {spec.name + ": tokens-per-expert CV", "training tokens", "load CV", false}, cv_lines);
  md << "\n## Plots\n\n";
  for (const auto& p : pngs) md << "![" << p << "](" << p << ")\n";
  md << "\nPer-run metrics, configs and results: `runs/`.\n";

  json result = {{"name", spec.name}, {"source", spec.source}, {"command", command}, {"budget", {{spec.budget_kind, spec.budget}}},
                 {"seeds", spec.seeds}, {"baseline", spec.baseline}, {"target_loss", target},
                 {"baseline_train_seconds", baseline_time}, {"baseline_cpu_seconds", baseline_cpu}, {"variants", jv}, {"plots", pngs}};
  write_file_atomic((out / "README.md").string(), md.str());
  write_file_atomic((out / "results.json").string(), result.dump(2) + "\n");
  return result;
}

}  // namespace ecdlm
