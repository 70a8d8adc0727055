#include "ecdlm/train/experiment.h"

#include <filesystem>
#include <set>

#include "ecdlm/model/config.h"
#include "ecdlm/train/retrofit.h"
#include "ecdlm/train/trainer.h"
#include "ecdlm/util/error.h"
#include "ecdlm/util/fs.h"
#include "ecdlm/util/json_value.h"
#include "ecdlm/util/log.h"

namespace ecdlm {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

void check_keys(const json& j, const std::string& src, const std::string& where,
                const std::set<std::string>& allowed) {
  if (!j.is_object()) fail(src, where, "must be a JSON object", "");
  for (auto it = j.begin(); it != j.end(); ++it)
    if (!allowed.count(it.key())) {
      std::string list;
      for (const auto& a : allowed) list += (list.empty() ? "" : ", ") + a;
      fail(src, (where.empty() ? "" : where + ".") + it.key(), "unknown key", "valid keys: " + list);
    }
}

void parse_budget(const json& b, const std::string& src, const std::string& where, ExperimentSpec& s) {
  check_keys(b, src, where, {"tokens", "seconds"});
  if (b.size() != 1) fail(src, where, "needs exactly one of tokens or seconds", "e.g. {\"tokens\": 2000000}");
  s.budget_kind = b.begin().key();
  if (!b.begin()->is_number() || b.begin()->get<double>() <= 0)
    fail(src, where + "." + s.budget_kind, "must be a positive number", "");
  s.budget = b.begin()->get<double>();
}

std::vector<uint64_t> parse_seeds(const json& j, const std::string& src, const std::string& where) {
  if (!j.is_array() || j.empty()) fail(src, where, "must be a non-empty array of integers", "e.g. [1, 2]");
  std::vector<uint64_t> seeds;
  for (const auto& v : j) {
    if (!v.is_number_integer() || v.get<int64_t>() < 0) fail(src, where, "seeds must be non-negative integers", "");
    seeds.push_back(v.get<uint64_t>());
  }
  if (std::set<uint64_t>(seeds.begin(), seeds.end()).size() != seeds.size())
    fail(src, where, "repeated seed", "list each seed once");
  return seeds;
}

// A model directory (has config.json) as is; a run directory: its newest checkpoint.
std::string resolve_init_from(const std::string& path, const std::string& src, const std::string& field) {
  if (fs::exists(fs::path(path) / "config.json")) return path;
  auto ck = latest_checkpoint(path);
  if (!ck.empty()) return ck;
  fail(src, field, "'" + path + "' is neither a model directory nor a run directory with checkpoints",
       "run the experiment that trains it first");
}

}  // namespace

ExperimentSpec ExperimentSpec::load(const std::string& path, bool quick) {
  auto j = read_json_file(path);
  ExperimentSpec s;
  s.source = path;
  check_keys(j, path, "", {"name", "description", "base", "budget", "seeds", "baseline", "target", "train",
                           "model", "variants", "quick", "runs_dir", "results_dir"});
  auto str = [&](const char* k, const std::string& def) {
    std::string v = def;
    if (j.contains(k)) json_value(j[k], v, path, k);
    return v;
  };
  s.name = str("name", fs::path(path).stem().string());
  s.description = str("description", "");
  s.base = str("base", "");
  if (s.base.empty()) fail(path, "base", "missing", "name a run config, e.g. \"configs/brown-small.json\"");
  if (!j.contains("budget")) fail(path, "budget", "missing", "e.g. {\"tokens\": 2000000} or {\"seconds\": 600}");
  parse_budget(j["budget"], path, "budget", s);
  if (j.contains("seeds")) s.seeds = parse_seeds(j["seeds"], path, "seeds");
  if (j.contains("model")) s.model = j["model"];
  if (j.contains("train")) s.train = j["train"];
  if (!j.contains("variants") || !j["variants"].is_array() || j["variants"].empty())
    fail(path, "variants", "missing or empty", "list the runs, e.g. [{\"name\": \"ec\"}, ...]");
  std::set<std::string> names;
  for (size_t i = 0; i < j["variants"].size(); ++i) {
    const auto& v = j["variants"][i];
    const std::string where = "variants[" + std::to_string(i) + "]";
    check_keys(v, path, where, {"name", "model", "train", "retrofit"});
    ExperimentVariant ev;
    if (!v.contains("name") || !v["name"].is_string() || v["name"].get<std::string>().empty())
      fail(path, where + ".name", "missing", "give every variant a unique name");
    ev.name = v["name"];
    if (ev.name.find_first_of("/\\ ") != std::string::npos)
      fail(path, where + ".name", "'" + ev.name + "' contains '/', '\\' or a space", "it names a directory");
    if (!names.insert(ev.name).second) fail(path, where + ".name", "duplicate name '" + ev.name + "'", "");
    if (v.contains("model")) ev.model = v["model"];
    if (v.contains("train")) ev.train = v["train"];
    if (v.contains("retrofit")) {
      ev.retrofit = v["retrofit"];
      check_keys(ev.retrofit, path, where + ".retrofit", {"schedule", "k", "k_min", "k_max", "z_loss_coeff"});
      if (!ev.train.contains("init_from") && !(j.contains("train") && j["train"].contains("init_from")))
        fail(path, where + ".retrofit", "needs train.init_from", "name the token-choice checkpoint to convert");
    }
    s.variants.push_back(std::move(ev));
  }
  s.baseline = str("baseline", s.variants.front().name);
  if (!names.count(s.baseline)) fail(path, "baseline", "no variant named '" + s.baseline + "'", "");
  s.target_variant = s.baseline;
  if (j.contains("target")) {
    const auto& t = j["target"];
    check_keys(t, path, "target", {"variant", "loss"});
    if (t.contains("loss")) {
      json_value(t["loss"], s.target_loss, path, "target.loss");
      s.target_variant.clear();
    } else if (t.contains("variant")) {
      json_value(t["variant"], s.target_variant, path, "target.variant");
      if (!names.count(s.target_variant)) fail(path, "target.variant", "no variant named '" + s.target_variant + "'", "");
    }
  }
  s.runs_dir = str("runs_dir", "runs/experiments/" + s.name);
  s.results_dir = str("results_dir", "docs/results/" + s.name);
  if (quick) {
    if (!j.contains("quick"))
      fail(path, "quick", "no quick section", "add {\"quick\": {\"budget\": ..., \"seeds\": [1], ...}}");
    const auto& q = j["quick"];
    check_keys(q, path, "quick", {"budget", "seeds", "model", "train"});
    if (q.contains("budget")) parse_budget(q["budget"], path, "quick.budget", s);
    if (q.contains("seeds")) s.seeds = parse_seeds(q["seeds"], path, "quick.seeds");
    if (q.contains("model")) s.model.merge_patch(q["model"]);
    if (q.contains("train")) s.train.merge_patch(q["train"]);
    s.quick = true;
    s.runs_dir += "-quick";
    s.results_dir += "-quick";
  }
  return s;
}

std::vector<ExperimentRun> plan_experiment(const ExperimentSpec& spec, const std::string& data_dir_override) {
  auto base = read_json_file(spec.base);
  check_keys(base, spec.base, "", {"description", "model", "train"});
  std::vector<ExperimentRun> runs;
  for (uint64_t seed : spec.seeds) {
    for (const auto& v : spec.variants) {
      const std::string where = spec.source + ": variant " + v.name;
      json train = base.value("train", json::object());
      train.merge_patch(spec.train);
      train.merge_patch(v.train);
      // Quick overrides win over the variant's (they shrink the run), except init_from.
      json model_j;
      if (train.contains("init_from") && train["init_from"].is_object()) {
        const auto& ref = train["init_from"];
        const std::string field = "variants." + v.name + ".train.init_from";
        check_keys(ref, spec.source, field, {"experiment", "variant", "seed"});
        if (!ref.contains("experiment") || !ref.contains("variant") || !ref.contains("seed"))
          fail(spec.source, field, "needs experiment, variant and seed", "e.g. {\"experiment\": \"ec-vs-tc\", ...}");
        std::string experiment, variant;
        uint64_t seed = 0;
        json_value(ref["experiment"], experiment, spec.source, field + ".experiment");
        json_value(ref["variant"], variant, spec.source, field + ".variant");
        json_value(ref["seed"], seed, spec.source, field + ".seed");
        train["init_from"] = (fs::path(spec.runs_dir).parent_path() / (experiment + (spec.quick ? "-quick" : "")) /
                              variant / ("seed-" + std::to_string(seed)))
                                 .string();
      }
      if (train.contains("init_from") && !train["init_from"].is_string())
        fail(spec.source, "variants." + v.name + ".train.init_from", "must be a path or an experiment reference", "");
      if (train.contains("init_from") && !train["init_from"].get<std::string>().empty()) {
        train["init_from"] = resolve_init_from(train["init_from"], spec.source, "variants." + v.name + ".train.init_from");
        model_j = ModelConfig::load(train["init_from"].get<std::string>()).to_json();
        // The architecture is the checkpoint's: only routing/loss keys may change.
        for (auto it = spec.model.begin(); it != spec.model.end(); ++it)
          if (it.key().rfind("moe_", 0) == 0) model_j[it.key()] = it.value();
      } else {
        model_j = base.value("model", json::object());
        model_j.merge_patch(spec.model);
      }
      model_j.merge_patch(v.model);
      std::vector<std::string> unknown;
      ModelConfig cfg = ModelConfig::from_json(model_j, where, &unknown);
      if (!unknown.empty()) fail(spec.source, "variants." + v.name + ".model." + unknown.front(), "unknown key", "");
      if (!v.retrofit.is_null()) {
        RetrofitParams rp;
        const auto opt = [&](const char* k, auto& out) {
          if (v.retrofit.contains(k)) json_value(v.retrofit[k], out, spec.source, "variants." + v.name + ".retrofit." + k);
        };
        opt("schedule", rp.schedule);
        opt("k", rp.k);
        opt("k_min", rp.k_min);
        opt("k_max", rp.k_max);
        opt("z_loss_coeff", rp.z_loss_coeff);
        cfg = retrofit_config(cfg, rp);
      }
      apply_tc_scaling_factor(cfg);

      ExperimentRun r;
      r.variant = v.name;
      r.seed = seed;
      r.run_dir = (fs::path(spec.runs_dir) / v.name / ("seed-" + std::to_string(seed))).string();
      r.params.update_from_json(train, where);
      if (!data_dir_override.empty()) r.params.data_dir = data_dir_override;
      r.params.seed = seed;
      r.params.out_dir = r.run_dir;
      r.params.halt_at_step = 0;
      if (spec.budget_kind == "tokens") {
        const double per_step = static_cast<double>(r.params.batch_size * r.params.seq_len * r.params.grad_accum);
        r.params.max_steps = std::max<int64_t>(1, static_cast<int64_t>(std::ceil(spec.budget / per_step)));
        r.params.time_budget_s = 0.0;
      } else {
        r.params.max_steps = 0;
        r.params.time_budget_s = spec.budget;
      }
      r.params.validate();
      r.cfg = cfg;
      runs.push_back(std::move(r));
    }
  }
  return runs;
}

int64_t run_experiment(std::vector<ExperimentRun>& runs, const ExperimentOptions& opt) {
  int64_t trained = 0;
  for (size_t i = 0; i < runs.size(); ++i) {
    auto& r = runs[i];
    const auto result_path = (fs::path(r.run_dir) / "result.json").string();
    if (fs::exists(result_path) && !opt.rerun) {
      r.result = read_json_file(result_path);
      LOG_INFO("experiment: [" << i + 1 << "/" << runs.size() << "] " << r.variant << " seed " << r.seed
                               << ": done earlier (" << result_path << ")");
      continue;
    }
    if (opt.report_only) {
      LOG_WARN("experiment: " << r.variant << " seed " << r.seed << " has no result yet; left out of the report");
      continue;
    }
    if (opt.rerun && fs::exists(r.run_dir)) fs::remove_all(r.run_dir);
    const bool resume = !latest_checkpoint(r.run_dir).empty();
    LOG_INFO("experiment: [" << i + 1 << "/" << runs.size() << "] " << r.variant << " seed " << r.seed << " -> "
                             << r.run_dir << (resume ? " (resuming)" : ""));
    if (!resume && fs::exists(fs::path(r.run_dir) / "metrics.jsonl")) fs::remove(fs::path(r.run_dir) / "metrics.jsonl");
    auto res = run_training(r.cfg, r.params, resume);
    r.result = res.to_json();
    if (res.diverged) LOG_WARN("experiment: " << r.variant << " seed " << r.seed << " diverged; reported as such");
    write_file_atomic(result_path, r.result.dump(2) + "\n");
    ++trained;
  }
  return trained;
}

}  // namespace ecdlm
