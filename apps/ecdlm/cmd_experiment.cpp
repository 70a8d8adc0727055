// ecdlm experiment SPEC.json: a matrix of training runs (variants x seeds, one budget) and a
// report with tables and plots in the results directory.
#include <iostream>

#include "commands.h"
#include "ecdlm/dist/process_group.h"
#include "ecdlm/moe/capacity.h"
#include "ecdlm/model/moe_dlm.h"
#include "ecdlm/train/experiment.h"
#include "ecdlm/util/error.h"
#include "ecdlm/util/log.h"

namespace ecdlm::cli {
namespace {

struct ExperimentArgs {
  std::string spec, data, runs_dir, results_dir;
  bool quick = false, rerun = false, report_only = false, dry_run = false, json = false;
};

std::string command_line(const ExperimentArgs& a) {
  const int threads = global_options().threads;
  std::string c = "build/ecdlm " + (threads > 0 ? "--threads " + std::to_string(threads) + " " : std::string()) +
                  "experiment " + a.spec;
  if (a.quick) c += " --quick";
  if (!a.data.empty()) c += " --data " + a.data;
  return c;
}

int run(const ExperimentArgs& a) {
  // The arms run one after another in one process and share one report; a distributed run of
  // every arm would need each rank to agree on the whole matrix and its skips. Not supported.
  if (const auto env = dist::DistEnv::from_environment(); env.distributed())
    fail("environment", "WORLD_SIZE",
         "experiment does not run distributed (WORLD_SIZE " + std::to_string(env.world_size) +
             "): it trains its runs one after another in one process",
         "run `ecdlm experiment` as one process, or launch the runs you want distributed as `ecdlm launch "
         "--nproc-per-node N -- train ...`");
  if (a.rerun && a.report_only)
    fail("", "--rerun", "conflicts with --report-only (which trains nothing and reports the finished runs)",
         "drop one of the two");
  auto spec = ExperimentSpec::load(a.spec, a.quick);
  if (!a.runs_dir.empty()) spec.runs_dir = a.runs_dir;
  if (!a.results_dir.empty()) spec.results_dir = a.results_dir;
  auto runs = plan_experiment(spec, a.data);
  LOG_INFO("experiment " << spec.name << ": " << spec.variants.size() << " variants x " << spec.seeds.size()
                         << " seeds, budget " << spec.budget << " " << spec.budget_kind << " per run; runs in "
                         << spec.runs_dir << ", results in " << spec.results_dir);
  for (const auto& r : runs)
    LOG_INFO("  " << r.variant << " seed " << r.seed << ": " << to_string(r.cfg.router_type) << " "
                  << (r.cfg.router_type == RouterType::kExpertChoice ? r.cfg.moe_capacity_schedule : "")
                  << " E[k] " << (r.cfg.router_type == RouterType::kExpertChoice
                                      ? make_schedule(r.cfg).expected_k(r.params.seq_len)
                                      : static_cast<double>(r.cfg.num_experts_per_tok))
                  << ", steps " << r.params.max_steps << ", time " << r.params.time_budget_s << " s"
                  << (r.params.init_from.empty() ? "" : ", from " + r.params.init_from));
  if (a.dry_run) return 0;
  ExperimentOptions opt;
  opt.rerun = a.rerun;
  opt.report_only = a.report_only;
  run_experiment(runs, opt);
  auto report = write_experiment_report(spec, runs, command_line(a));
  if (a.json) {
    std::cout << report.dump(2) << std::endl;
  } else {
    std::cout << spec.results_dir << "/README.md\n";
    for (const auto& p : report["plots"]) std::cout << spec.results_dir << "/" << p.get<std::string>() << "\n";
  }
  return 0;
}

}  // namespace

void register_experiment(CLI::App& app) {
  auto a = std::make_shared<ExperimentArgs>();
  auto* sub = app.add_subcommand("experiment", "Run a matrix of training runs (variants x seeds) and write a report");
  sub->add_option("spec", a->spec, "Experiment JSON (configs/experiments/*.json)")->required()->check(CLI::ExistingFile);
  sub->add_flag("--quick", a->quick, "Use the spec's quick section: a pipeline check in minutes, not the science");
  sub->add_option("--data", a->data, "Prepared data directory (overrides every run's data_dir)");
  sub->add_option("--runs-dir", a->runs_dir, "Where runs go (default runs/experiments/NAME[-quick])");
  sub->add_option("--results-dir", a->results_dir, "Where the report goes (default docs/results/NAME[-quick])");
  sub->add_flag("--rerun", a->rerun, "Retrain runs that already finished (default: reuse them)");
  sub->add_flag("--report-only", a->report_only, "Train nothing; report the finished runs");
  sub->add_flag("--dry-run", a->dry_run, "Print the plan and exit");
  sub->add_flag("--json", a->json, "Print results.json on stdout");
  set_runner(sub, [a] { return run(*a); });
}

}  // namespace ecdlm::cli
