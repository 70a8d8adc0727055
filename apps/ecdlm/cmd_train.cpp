// ecdlm train: train a TC or EC MoE diffusion LM on prepared shards.
#include <filesystem>
#include <iostream>

#include "cli_util.h"
#include "commands.h"
#include "ecdlm/data/shards.h"
#include "ecdlm/generate/decoder.h"
#include "ecdlm/model/checkpoint.h"
#include "ecdlm/text/tokenizer.h"
#include "ecdlm/train/trainer.h"
#include "ecdlm/util/error.h"
#include "ecdlm/util/log.h"

namespace ecdlm::cli {
namespace fs = std::filesystem;

namespace {

struct TrainArgs {
  std::string config, out, data, time_budget, lr_schedule, router, schedule, init_from, loss_norm, moe_routing,
      distill_from;
  int64_t steps = 0, batch = 0, seq_len = 0, warmup = -1, grad_accum = 0, eval_every = -1,
          save_every = -1, keep_last = 0, log_every = 0, halt_at = 0, experts = 0, top_k = 0, eval_windows = 0,
          eval_samples = 0, samples = 3, sample_length = 64, threads = 0;
  uint64_t seed = 0;
  double lr = 0, grad_clip = -1, capacity_factor = -1, aux_coeff = -1, z_coeff = -1,
         bias_rate = -1, k_min = -1, k_max = -1, mask_min = -1, mask_max = -1, block_top_p = -1,
         distill_weight = -1, distill_temperature = -1;
  int64_t block_min_experts = 0, block_chunk = 0;
  bool resume = false, json = false, no_inverse_r = false;
  std::string bf16;
  double dist_timeout = 300.0;
  int64_t dist_ep = 1;
  bool dist_ep_f32_payload = false;
  std::map<std::string, CLI::Option*> opt;
};

bool given(const TrainArgs& a, const std::string& name) {
  auto it = a.opt.find(name);
  return it != a.opt.end() && it->second->count() > 0;
}

// Unigram cross-entropy of val under train frequencies (add-one): the ELBO of a model that
// ignores context, i.e. the baseline a trained model must beat.
double unigram_baseline(const std::string& data_dir) {
  auto tr = data::TokenShard::open(data_dir, "train");
  auto va = data::TokenShard::open(data_dir, "val");
  std::vector<double> counts(static_cast<size_t>(tr.vocab_size()), 1.0);
  double total = static_cast<double>(counts.size());
  for (int64_t i = 0; i < tr.size(); ++i) counts[static_cast<size_t>(tr.at(i))] += 1.0, total += 1.0;
  double nll = 0.0;
  for (int64_t i = 0; i < va.size(); ++i) nll -= std::log(counts[static_cast<size_t>(va.at(i))] / total);
  return va.size() ? nll / static_cast<double>(va.size()) : 0.0;
}

int run(TrainArgs& a) {
  RunConfig rc;
  if (!a.config.empty()) rc = load_run_config(a.config);
  ModelConfig cfg = rc.model;
  // Fine-tuning a checkpoint without a --config: its own architecture.
  if (a.config.empty() && given(a, "--train-init-from")) cfg = ModelConfig::load(a.init_from);
  TrainParams p;
  p.update_from_json(rc.train, a.config.empty() ? "defaults" : a.config);
  if (given(a, "--out")) p.out_dir = a.out;
  if (given(a, "--data")) p.data_dir = a.data;
  if (given(a, "--train-init-from")) p.init_from = a.init_from;
  if (given(a, "--train-steps")) p.max_steps = a.steps;
  if (given(a, "--train-time-budget")) p.time_budget_s = parse_duration(a.time_budget, "--train-time-budget");
  if (given(a, "--train-batch-size")) p.batch_size = a.batch;
  if (given(a, "--train-seq-len")) p.seq_len = a.seq_len;
  if (given(a, "--train-lr")) p.lr = a.lr;
  if (given(a, "--train-warmup")) p.warmup_steps = a.warmup;
  if (given(a, "--train-lr-schedule")) p.lr_schedule = a.lr_schedule;
  if (given(a, "--train-grad-accum")) p.grad_accum = a.grad_accum;
  if (given(a, "--train-grad-clip")) p.grad_clip = a.grad_clip;
  if (given(a, "--train-seed")) p.seed = a.seed;
  if (given(a, "--train-eval-every")) p.eval_every = a.eval_every;
  if (given(a, "--train-save-every")) p.save_every = a.save_every;
  if (given(a, "--train-keep-last")) p.keep_last = a.keep_last;
  if (given(a, "--train-log-every")) p.log_every = a.log_every;
  if (given(a, "--train-halt-at")) p.halt_at_step = a.halt_at;
  if (given(a, "--train-bf16")) {
    if (a.bf16 != "true" && a.bf16 != "false")
      fail("", "--train-bf16", "expects true or false", "");
    p.bf16 = a.bf16 == "true";
  }
  if (given(a, "--eval-windows")) p.eval.max_windows = a.eval_windows;
  if (given(a, "--eval-mask-samples")) p.eval.mask_samples = a.eval_samples;
  if (a.no_inverse_r) p.inverse_r = false;
  if (given(a, "--diffusion-mask-ratio-min")) p.mask_ratio_min = a.mask_min;
  if (given(a, "--diffusion-mask-ratio-max")) p.mask_ratio_max = a.mask_max;
  if (given(a, "--train-loss-norm")) p.loss_norm = a.loss_norm;
  if (given(a, "--moe-routing")) p.moe_routing = a.moe_routing;
  if (given(a, "--block-top-p")) p.block_top_p = a.block_top_p;
  if (given(a, "--block-min-experts")) p.block_min_experts = a.block_min_experts;
  if (given(a, "--block-chunk")) p.block_chunk = a.block_chunk;
  if (given(a, "--train-distill-from")) p.distill_from = a.distill_from;
  if (given(a, "--train-distill-weight")) p.distill_weight = a.distill_weight;
  if (given(a, "--train-distill-temperature")) p.distill_temperature = a.distill_temperature;
  if (given(a, "--moe-router")) {
    if (a.router == "ec" || a.router == "expert_choice") cfg.router_type = RouterType::kExpertChoice;
    else if (a.router == "tc" || a.router == "token_choice") cfg.router_type = RouterType::kTokenChoice;
    else fail("", "--moe-router", "unknown router '" + a.router + "'", "use ec or tc");
  }
  if (given(a, "--moe-experts")) cfg.num_experts = a.experts;
  if (given(a, "--moe-top-k")) cfg.num_experts_per_tok = a.top_k;
  if (given(a, "--moe-capacity-factor")) cfg.moe_capacity_factor = a.capacity_factor;
  if (given(a, "--moe-aux-loss-coeff")) cfg.moe_aux_loss_coeff = a.aux_coeff;
  if (given(a, "--moe-z-loss-coeff")) cfg.moe_z_loss_coeff = a.z_coeff;
  if (given(a, "--moe-loss-free-bias-rate")) cfg.moe_loss_free_bias_rate = a.bias_rate;
  if (given(a, "--moe-capacity-schedule")) cfg.moe_capacity_schedule = a.schedule;
  if (given(a, "--moe-capacity-k-min")) cfg.moe_capacity_k_min = a.k_min;
  if (given(a, "--moe-capacity-k-max")) cfg.moe_capacity_k_max = a.k_max;
  if (cfg.router_type == RouterType::kTokenChoice && cfg.moe_loss_free_bias_rate > 0)
    cfg.moe_router_enable_expert_bias = true;
  if (cfg.router_type == RouterType::kExpertChoice) {
    for (const char* f : {"--moe-capacity-factor", "--moe-aux-loss-coeff", "--moe-loss-free-bias-rate"})
      if (given(a, f)) LOG_WARN(f << " has no effect with the expert-choice router");
  } else {
    for (const char* f : {"--moe-capacity-schedule", "--moe-capacity-k-min", "--moe-capacity-k-max"})
      if (given(a, f)) LOG_WARN(f << " has no effect with the token-choice router");
  }
  if (cfg.router_type == RouterType::kExpertChoice && cfg.moe_capacity_schedule == "static")
    for (const char* f : {"--moe-capacity-k-min", "--moe-capacity-k-max"})
      if (given(a, f)) LOG_WARN(f << " has no effect with the static capacity schedule (k = --moe-top-k)");
  if (p.moe_routing != "block")
    for (const char* f : {"--block-top-p", "--block-min-experts", "--block-chunk"})
      if (given(a, f)) LOG_WARN(f << " has no effect: training routing is " << p.moe_routing << " (it applies to --moe-routing block)");
  if (p.distill_from.empty())
    for (const char* f : {"--train-distill-weight", "--train-distill-temperature"})
      if (given(a, f)) LOG_WARN(f << " has no effect without --train-distill-from");
  // TC norm matching (ec-dlm.md §4.1): a constant factor, stored in config.json.
  apply_tc_scaling_factor(cfg);

  DistOptions dopt;
  dopt.timeout_s = a.dist_timeout;
  dopt.ep = a.dist_ep;
  dopt.ep_f32_payload = a.dist_ep_f32_payload;
  if (a.dist_ep_f32_payload && a.dist_ep <= 1) LOG_WARN("--dist-ep-f32-payload has no effect without --dist-ep > 1");
  auto res = run_training(cfg, p, a.resume, dopt);
  // Distributed: rank 0 reports for the run (the others trained the same model).
  if (dist::DistEnv::from_environment().rank != 0) return res.diverged ? 4 : 0;
  double uni = unigram_baseline(p.data_dir);
  nlohmann::json out = res.to_json();
  out["unigram_val_loss"] = uni;
  out["unigram_val_ppl"] = std::exp(uni);
  // A few samples from the final model, so a person can judge it.
  std::vector<std::string> samples;
  if (!res.diverged && a.samples > 0 && !res.last_checkpoint.empty()) {
    auto model = load_model(res.last_checkpoint);
    auto tok = text::load_tokenizer(res.last_checkpoint);
    gen::DecodeParams dp;
    dp.gen_length = a.sample_length;
    dp.block_length = a.sample_length % 32 == 0 ? 32 : a.sample_length;
    dp.steps = a.sample_length;
    for (int64_t i = 0; i < a.samples; ++i) {
      dp.seed = static_cast<uint64_t>(i);
      dp.temperature = 0.8;
      auto prompt = torch::tensor(std::vector<int64_t>{tok->eos_id()}, torch::kInt64).view({1, 1});
      auto r = gen::llada_generate(model, prompt, dp);
      auto row = r.tokens_BG[0];
      std::vector<int32_t> ids;
      for (int64_t j = 0; j < row.size(0); ++j) {
        auto id = row[j].item<int64_t>();
        if (id == tok->eos_id() || id == tok->pad_id()) break;
        ids.push_back(static_cast<int32_t>(id));
      }
      samples.push_back(tok->decode(ids));
    }
  }
  out["samples"] = samples;
  if (a.json) {
    std::cout << out.dump(2) << std::endl;
  } else {
    std::cout << "steps " << res.steps << ", " << res.tokens << " tokens in "
              << res.seconds << " s (" << static_cast<int64_t>(res.tokens_per_s) << " tokens/s)\n";
    std::cout << "validation ELBO loss " << res.final_val_loss << "  perplexity " << res.final_val_ppl
              << "   (unigram baseline perplexity " << std::exp(uni) << ")\n";
    std::cout << "checkpoint: " << res.last_checkpoint << "   best: " << res.best_checkpoint << "\n";
    for (size_t i = 0; i < samples.size(); ++i) std::cout << "--- sample " << i << " ---\n" << samples[i] << "\n";
  }
  return res.diverged ? 4 : 0;
}

}  // namespace

void register_train(CLI::App& app) {
  auto a = std::make_shared<TrainArgs>();
  auto* sub = app.add_subcommand("train", "Train a token-choice or expert-choice MoE diffusion LM");
  auto add = [&](const std::string& name, auto& var, const std::string& help) {
    a->opt[name] = sub->add_option(name, var, help);
    return a->opt[name];
  };
  add("--config", a->config, "Run config JSON ({\"model\": {...}, \"train\": {...}})")->check(CLI::ExistingFile);
  add("--out", a->out, "Output run directory (checkpoints, metrics.jsonl, best/)");
  add("--data", a->data, "Prepared data directory (ecdlm prepare-data)");
  sub->add_flag("--resume", a->resume, "Continue from the newest checkpoint in --out");
  sub->add_flag("--json", a->json, "Print the result as JSON on stdout");
  add("--train-init-from", a->init_from, "Initialize weights from this model directory");
  add("--train-steps", a->steps, "Optimizer steps (0 = until the time budget)")->check(CLI::NonNegativeNumber);
  add("--train-time-budget", a->time_budget, "Wall-clock budget: 90, 90s, 20m, 1.5h");
  add("--train-batch-size", a->batch, "Sequences per micro-batch")->check(CLI::PositiveNumber);
  add("--train-seq-len", a->seq_len, "Tokens per sequence (L)")->check(CLI::PositiveNumber);
  add("--train-lr", a->lr, "Peak learning rate");
  add("--train-warmup", a->warmup, "Linear warmup steps");
  add("--train-lr-schedule", a->lr_schedule, "cosine | wsd | constant");
  add("--train-grad-accum", a->grad_accum, "Micro-batches per optimizer step")->check(CLI::PositiveNumber);
  add("--train-grad-clip", a->grad_clip, "Gradient norm clip (0 = off)");
  add("--train-seed", a->seed, "Seed for init, data order and masks");
  add("--train-eval-every", a->eval_every, "Validate every N steps (0 = only at the end)");
  add("--train-save-every", a->save_every, "Checkpoint every N steps (0 = only at the end)");
  add("--train-keep-last", a->keep_last, "Checkpoints to keep");
  add("--train-log-every", a->log_every, "Metrics line every N steps");
  add("--train-halt-at", a->halt_at, "Checkpoint and stop at this step, as if interrupted (resume later)");
  add("--train-bf16", a->bf16, "true|false: bf16 autocast for matmuls (fp32 master weights)");
  add("--eval-windows", a->eval_windows, "Validation windows per eval");
  add("--eval-mask-samples", a->eval_samples, "Mask draws per validation window");
  add("--moe-router", a->router, "ec | tc (overrides the config)");
  add("--moe-experts", a->experts, "Routed experts E");
  add("--moe-top-k", a->top_k, "TC top-k, or EC average experts per token");
  add("--moe-capacity-factor", a->capacity_factor, "TC capacity factor (0 = dropless)");
  add("--moe-aux-loss-coeff", a->aux_coeff, "TC Switch load-balancing loss coefficient");
  add("--moe-z-loss-coeff", a->z_coeff, "Router z-loss coefficient");
  add("--moe-loss-free-bias-rate", a->bias_rate, "TC loss-free balancing bias update rate");
  add("--moe-capacity-schedule", a->schedule, "EC capacity k(r): static, linear, linear-reverse, ...");
  add("--moe-capacity-k-min", a->k_min, "EC schedule k_min");
  add("--moe-capacity-k-max", a->k_max, "EC schedule k_max");
  sub->add_flag("--diffusion-no-inverse-r", a->no_inverse_r, "Drop the 1/r ELBO weight in the training loss");
  add("--diffusion-mask-ratio-min", a->mask_min, "Noise level t ~ U[min, max) (dMoE fine-tune: 0.3)");
  add("--diffusion-mask-ratio-max", a->mask_max, "Noise level upper bound (dMoE fine-tune: 0.8)");
  add("--train-loss-norm", a->loss_norm, "elbo (1/r-weighted, / B*L) or masked (mean CE over masked tokens)");
  add("--moe-routing", a->moe_routing, "token or block: dMoE block-coreset routing in every forward (learnable "
                                       "block experts), also used by the evaluations");
  add("--block-top-p", a->block_top_p, "Block routing: coreset mass p");
  add("--block-min-experts", a->block_min_experts, "Block routing: minimum coreset size G");
  add("--block-chunk", a->block_chunk, "Block routing: tokens per vote");
  add("--train-distill-from", a->distill_from, "Self-distillation teacher: a model dir of the same architecture "
                                               "(e.g. the token-routed original); it runs token routing on the same "
                                               "noised input");
  add("--train-distill-weight", a->distill_weight, "Loss = w * KL(teacher || student) + (1 - w) * CE (default 1)");
  add("--train-distill-temperature", a->distill_temperature, "Distillation softmax temperature T (KL scaled by "
                                                             "T^2; default 1)");
  add("--dist-timeout", a->dist_timeout, "Distributed runs (torchrun environment): seconds to wait for the other "
                                         "ranks at start-up and in every collective before failing (default 300)")
      ->check(Finite)->check(CLI::PositiveNumber);
  add("--dist-ep", a->dist_ep, "Expert parallel: ranks that split every MoE layer's experts (default 1); "
                               "WORLD_SIZE = data parallel x this, and it must divide the expert count")
      ->check(CLI::PositiveNumber);
  sub->add_flag("--dist-ep-f32-payload", a->dist_ep_f32_payload,
                "Expert parallel: send the dispatched token rows as f32 even under bf16 autocast (default: bf16, "
                "the rounding the experts' bf16 GEMMs make anyway, half the bytes; for comparisons)");
  add("--samples", a->samples, "Samples to generate from the final model")->check(CLI::NonNegativeNumber);
  add("--sample-length", a->sample_length, "Tokens per sample")->check(CLI::PositiveNumber);
  set_runner(sub, [a] { return run(*a); });
}

}  // namespace ecdlm::cli
