// ecdlm retrofit: swap a token-choice checkpoint's router for expert choice (static or scheduled
// capacity), optionally fine-tuning the router, the router + experts, or everything.
#include <filesystem>
#include <iostream>

#include "cli_util.h"
#include "commands.h"
#include "ecdlm/model/checkpoint.h"
#include "ecdlm/train/retrofit.h"
#include "ecdlm/train/trainer.h"
#include "ecdlm/util/error.h"
#include "ecdlm/util/log.h"

namespace ecdlm::cli {
namespace {

struct RetrofitArgs {
  std::string from, out, data = "data/brown", trainable = "router", time_budget, lr_schedule = "cosine";
  RetrofitParams rp;
  int64_t steps = 0, batch = 16, seq_len = 256, warmup = 20, eval_every = 100;
  double lr = 1e-3;
  uint64_t seed = 1234;
  bool json = false;
};

int run(const RetrofitArgs& a) {
  auto tc_cfg = ModelConfig::load(a.from);
  auto ec_cfg = retrofit_config(tc_cfg, a.rp);
  LOG_INFO("retrofit: " << a.from << " (token choice, k=" << tc_cfg.num_experts_per_tok << ") -> "
                        << a.out << " (expert choice, schedule " << ec_cfg.moe_capacity_schedule << ", k="
                        << ec_cfg.num_experts_per_tok << ", k_min " << ec_cfg.moe_capacity_k_min << ", k_max "
                        << ec_cfg.moe_capacity_k_max << "), train " << a.trainable);
  nlohmann::json out = {{"from", a.from}, {"out", a.out}, {"config", ec_cfg.to_json()}};
  const auto env = dist::DistEnv::from_environment();
  if (a.steps == 0 && a.time_budget.empty()) {
    // Every rank would write the same directory at once, and there is nothing to share out.
    if (env.distributed())
      fail("environment", "WORLD_SIZE",
           "retrofit without fine-tuning only converts a checkpoint; it does not run distributed (WORLD_SIZE " +
               std::to_string(env.world_size) + ")",
           "run the conversion as one process, or add --train-steps to fine-tune data parallel");
    // Conversion only: the same weights under the new router.
    auto model = load_model(a.from, &ec_cfg);
    save_model_dir(model, a.out, a.from);
    out["model_dir"] = a.out;
  } else {
    TrainParams p;
    p.data_dir = a.data;
    p.out_dir = a.out;
    p.init_from = a.from;
    p.trainable = a.trainable;
    p.max_steps = a.steps;
    if (!a.time_budget.empty()) p.time_budget_s = parse_duration(a.time_budget, "--train-time-budget");
    p.batch_size = a.batch;
    p.seq_len = a.seq_len;
    p.lr = a.lr;
    p.warmup_steps = a.warmup;
    p.lr_schedule = a.lr_schedule;
    p.eval_every = a.eval_every;
    p.save_every = a.eval_every;
    p.seed = a.seed;
    // With the torchrun environment: data parallel, as `train` (rank 0 writes and reports).
    auto res = run_training(ec_cfg, p, false);
    if (env.rank != 0) return res.diverged ? 4 : 0;
    out["train"] = res.to_json();
    out["model_dir"] = res.last_checkpoint;
    if (res.diverged) {
      std::cerr << "ecdlm: retrofit fine-tuning diverged; see " << a.out << "/metrics.jsonl\n";
      return 4;
    }
  }
  if (a.json)
    std::cout << out.dump(2) << std::endl;
  else
    std::cout << "expert-choice model: " << out["model_dir"].get<std::string>() << "\n";
  return 0;
}

}  // namespace

void register_retrofit(CLI::App& app) {
  auto a = std::make_shared<RetrofitArgs>();
  auto* sub = app.add_subcommand("retrofit", "Replace a token-choice model's router by expert choice (and optionally fine-tune)");
  sub->add_option("--from", a->from, "Token-choice model directory")->required()->check(CLI::ExistingDirectory);
  sub->add_option("--out", a->out, "Output: a model directory (conversion only) or a run directory (with training)")->required();
  sub->add_option("--moe-capacity-schedule", a->rp.schedule, "EC capacity k(r): static, linear-reverse, ...")->capture_default_str();
  sub->add_option("--moe-top-k", a->rp.k, "Static EC k (default: the TC model's top-k)");
  sub->add_option("--moe-capacity-k-min", a->rp.k_min, "Schedule k_min");
  sub->add_option("--moe-capacity-k-max", a->rp.k_max, "Schedule k_max");
  sub->add_option("--moe-z-loss-coeff", a->rp.z_loss_coeff, "Router z-loss during fine-tuning")->capture_default_str();
  sub->add_option("--retrofit-train", a->trainable, "What fine-tuning updates: router | router+experts | all")
      ->capture_default_str()->check(CLI::IsMember({"router", "router+experts", "all"}));
  sub->add_option("--data", a->data, "Prepared data for fine-tuning")->capture_default_str();
  sub->add_option("--train-steps", a->steps, "Fine-tuning steps (0 and no time budget = convert only)")->capture_default_str()->check(CLI::NonNegativeNumber);
  sub->add_option("--train-time-budget", a->time_budget, "Fine-tuning wall-clock budget (90s, 20m, ...)");
  sub->add_option("--train-lr", a->lr, "Peak learning rate")->capture_default_str();
  sub->add_option("--train-warmup", a->warmup, "Warmup steps")->capture_default_str();
  sub->add_option("--train-lr-schedule", a->lr_schedule, "cosine | wsd | constant")->capture_default_str();
  sub->add_option("--train-batch-size", a->batch, "Sequences per step")->capture_default_str()->check(CLI::PositiveNumber);
  sub->add_option("--train-seq-len", a->seq_len, "Tokens per sequence")->capture_default_str()->check(CLI::PositiveNumber);
  sub->add_option("--train-eval-every", a->eval_every, "Validate and checkpoint every N steps")->capture_default_str();
  sub->add_option("--train-seed", a->seed, "Seed")->capture_default_str();
  sub->add_flag("--json", a->json, "Print JSON");
  set_runner(sub, [a, sub] {
    if (a->steps == 0 && a->time_budget.empty())  // conversion only: the fine-tuning flags would do nothing
      for (const char* f : {"--retrofit-train", "--data", "--train-lr", "--train-warmup", "--train-lr-schedule",
                            "--train-batch-size", "--train-seq-len", "--train-eval-every", "--train-seed"})
        if (sub->count(f) > 0)
          fail("", f, "only applies when fine-tuning; without --train-steps or --train-time-budget retrofit only converts",
               "add --train-steps N (or --train-time-budget), or drop " + std::string(f));
    return run(*a);
  });
}

}  // namespace ecdlm::cli
