// Experiment matrices (`ecdlm experiment`): variants x seeds under one budget, each an ordinary
// training run, then one report (markdown table, JSON and PNG plots) in a results directory.
//
// Spec file (JSON):
//   {"name": "ec-vs-tc", "description": "...", "base": "configs/brown-small.json",
//    "budget": {"tokens": 2000000} | {"seconds": 600}, "seeds": [1, 2],
//    "baseline": "tc-dropless",          // ratios refer to it (default: first variant)
//    "target": {"variant": "tc-dropless"} | {"loss": 6.8},   // for "time to target"
//    "train": {...}, "model": {...},      // overrides for every variant
//    "variants": [{"name": "ec", "model": {...}, "train": {...}, "retrofit": {...}}, ...],
//    "quick": {"budget": ..., "seeds": [...], "model": {...}, "train": {...}}}
// A variant whose train.init_from names a checkpoint (or a run directory: its newest checkpoint)
// starts from that model's config and weights; "retrofit" then swaps its router for EC.
// init_from may also be {"experiment": NAME, "variant": V, "seed": S}: that run of another
// experiment whose runs directory sits next to this one's (NAME-quick under --quick).
#pragma once
#include <nlohmann/json.hpp>

#include <cmath>
#include <string>
#include <vector>

#include "ecdlm/model/config.h"
#include "ecdlm/train/train_params.h"

namespace ecdlm {

struct ExperimentVariant {
  std::string name;
  nlohmann::json model = nlohmann::json::object();  // config.json key overrides
  nlohmann::json train = nlohmann::json::object();  // TrainParams key overrides
  nlohmann::json retrofit;                         // null or {"schedule","k","k_min","k_max"}
};

struct ExperimentSpec {
  std::string name, description, source;
  std::string base;                      // run config {"model": ..., "train": ...}
  std::string budget_kind = "tokens";    // tokens | seconds
  double budget = 0.0;
  std::vector<uint64_t> seeds = {1};
  std::string baseline;                  // variant name
  std::string target_variant;            // target = its mean final val loss
  double target_loss = NAN;              // or an explicit target
  std::string runs_dir, results_dir;     // defaults: runs/experiments/NAME, docs/results/NAME
  nlohmann::json model = nlohmann::json::object(), train = nlohmann::json::object();
  std::vector<ExperimentVariant> variants;
  bool quick = false;

  // Parses and validates (UserError naming the file and field). `quick` applies the "quick"
  // section: its budget, seeds and model/train overrides, and "-quick" output directories.
  static ExperimentSpec load(const std::string& path, bool quick);
};

struct ExperimentRun {
  std::string variant;
  uint64_t seed = 0;
  std::string run_dir;
  ModelConfig cfg;
  TrainParams params;
  nlohmann::json result;  // TrainResult::to_json() once trained (null before)
};

// One run per (seed, variant), seed-major so that machine noise spreads over the variants.
// Fails early (UserError) on bad overrides or a missing init_from checkpoint.
std::vector<ExperimentRun> plan_experiment(const ExperimentSpec& spec, const std::string& data_dir_override = "");

struct ExperimentOptions {
  bool rerun = false;         // retrain runs that already have result.json
  bool report_only = false;   // train nothing; report the runs that exist
};

// Trains every run without a result.json (an interrupted run resumes from its checkpoint) and
// fills ExperimentRun::result. Returns the number of runs trained now.
int64_t run_experiment(std::vector<ExperimentRun>& runs, const ExperimentOptions& opt);

// Writes RESULTS/README.md, results.json and the PNG plots; returns results.json's content.
nlohmann::json write_experiment_report(const ExperimentSpec& spec, const std::vector<ExperimentRun>& runs,
                                       const std::string& command);

}  // namespace ecdlm
