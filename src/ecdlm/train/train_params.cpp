#include "ecdlm/train/train_params.h"

#include <cmath>

#include "ecdlm/util/error.h"
#include "ecdlm/util/json_value.h"

namespace ecdlm {
using nlohmann::json;

json TrainParams::to_json() const {
  return {{"data_dir", data_dir}, {"out_dir", out_dir}, {"init_from", init_from}, {"trainable", trainable},
          {"batch_size", batch_size}, {"seq_len", seq_len}, {"grad_accum", grad_accum},
          {"max_steps", max_steps}, {"time_budget_s", time_budget_s}, {"lr", lr},
          {"min_lr_ratio", min_lr_ratio}, {"warmup_steps", warmup_steps},
          {"lr_schedule", lr_schedule}, {"wsd_decay_frac", wsd_decay_frac},
          {"weight_decay", weight_decay}, {"beta1", beta1}, {"beta2", beta2},
          {"adam_eps", adam_eps}, {"grad_clip", grad_clip}, {"inverse_r", inverse_r},
          {"bf16", bf16}, {"seed", seed}, {"log_every", log_every}, {"eval_every", eval_every},
          {"save_every", save_every}, {"keep_last", keep_last},
          {"eval_windows", eval.max_windows}, {"eval_mask_samples", eval.mask_samples},
          {"eval_batch_size", eval.batch_size}, {"eval_seed", eval.seed}, {"eval_bins", eval.bins},
          {"final_eval_windows", final_eval_windows}, {"halt_at_step", halt_at_step},
          {"mask_ratio_min", mask_ratio_min}, {"mask_ratio_max", mask_ratio_max}, {"loss_norm", loss_norm},
          {"moe_routing", moe_routing}, {"block_top_p", block_top_p}, {"block_min_experts", block_min_experts},
          {"block_chunk", block_chunk}, {"distill_from", distill_from}, {"distill_weight", distill_weight},
          {"distill_temperature", distill_temperature}};
}

void TrainParams::update_from_json(const json& j, const std::string& src) {
  if (!j.is_object()) fail(src, "train", "must be a JSON object", "");
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& k = it.key();
    const json& v = it.value();
    const auto get = [&](auto& field) { json_value(v, field, src, "train." + k); };
    if (k == "data_dir") get(data_dir);
    else if (k == "out_dir") get(out_dir);
    else if (k == "init_from") get(init_from);
    else if (k == "trainable") get(trainable);
    else if (k == "batch_size") get(batch_size);
    else if (k == "seq_len") get(seq_len);
    else if (k == "grad_accum") get(grad_accum);
    else if (k == "max_steps") get(max_steps);
    else if (k == "time_budget_s") get(time_budget_s);
    else if (k == "lr") get(lr);
    else if (k == "min_lr_ratio") get(min_lr_ratio);
    else if (k == "warmup_steps") get(warmup_steps);
    else if (k == "lr_schedule") get(lr_schedule);
    else if (k == "wsd_decay_frac") get(wsd_decay_frac);
    else if (k == "weight_decay") get(weight_decay);
    else if (k == "beta1") get(beta1);
    else if (k == "beta2") get(beta2);
    else if (k == "adam_eps") get(adam_eps);
    else if (k == "grad_clip") get(grad_clip);
    else if (k == "inverse_r") get(inverse_r);
    else if (k == "bf16") get(bf16);
    else if (k == "seed") get(seed);
    else if (k == "log_every") get(log_every);
    else if (k == "eval_every") get(eval_every);
    else if (k == "save_every") get(save_every);
    else if (k == "keep_last") get(keep_last);
    else if (k == "eval_windows") get(eval.max_windows);
    else if (k == "eval_mask_samples") get(eval.mask_samples);
    else if (k == "eval_batch_size") get(eval.batch_size);
    else if (k == "eval_seed") get(eval.seed);
    else if (k == "eval_bins") get(eval.bins);
    else if (k == "final_eval_windows") get(final_eval_windows);
    else if (k == "halt_at_step") get(halt_at_step);
    else if (k == "mask_ratio_min") get(mask_ratio_min);
    else if (k == "mask_ratio_max") get(mask_ratio_max);
    else if (k == "loss_norm") get(loss_norm);
    else if (k == "moe_routing") get(moe_routing);
    else if (k == "block_top_p") get(block_top_p);
    else if (k == "block_min_experts") get(block_min_experts);
    else if (k == "block_chunk") get(block_chunk);
    else if (k == "distill_from") get(distill_from);
    else if (k == "distill_weight") get(distill_weight);
    else if (k == "distill_temperature") get(distill_temperature);
    else fail(src, "train." + k, "unknown key", "see `ecdlm train --help` for the settings");
  }
}

void TrainParams::validate() const {
  auto need = [](bool ok, const char* field, const std::string& problem, const std::string& fix) {
    if (!ok) fail("", field, problem, fix);
  };
  need(batch_size > 0, "--train-batch-size", "must be > 0", "");
  need(seq_len > 1, "--train-seq-len", "must be > 1", "");
  need(grad_accum > 0, "--train-grad-accum", "must be > 0", "");
  need(max_steps > 0 || time_budget_s > 0, "--train-steps",
       "no budget: neither a step limit nor a time budget is set",
       "pass --train-steps N or --train-time-budget SECONDS");
  need(max_steps >= 0 && time_budget_s >= 0, "--train-steps", "budgets must be >= 0", "");
  need(lr > 0 && std::isfinite(lr), "--train-lr", "must be a positive number", "");
  need(min_lr_ratio >= 0 && min_lr_ratio <= 1, "min_lr_ratio", "must be in [0, 1]", "");
  need(warmup_steps >= 0, "--train-warmup", "must be >= 0", "");
  need(lr_schedule == "cosine" || lr_schedule == "wsd" || lr_schedule == "constant",
       "--train-lr-schedule", "unknown '" + lr_schedule + "'", "use cosine, wsd or constant");
  need(grad_clip >= 0, "--train-grad-clip", "must be >= 0 (0 = off)", "");
  need(eval_every >= 0 && save_every >= 0 && log_every > 0, "--train-eval-every",
       "intervals must be >= 0 (log interval > 0)", "");
  need(keep_last >= 1, "--train-keep-last", "must be >= 1", "");
  need(eval.max_windows > 0 && eval.mask_samples > 0 && eval.batch_size > 0, "eval_windows",
       "eval sizes must be > 0", "");
  for (auto b : eval.bins) need(b > 0, "eval_bins", "bin counts must be > 0", "");
  need(mask_ratio_min >= 0 && mask_ratio_max <= 1 && mask_ratio_min < mask_ratio_max, "--diffusion-mask-ratio-min",
       "need 0 <= min < max <= 1", "dMoE fine-tuning uses 0.3 and 0.8");
  need(loss_norm == "elbo" || loss_norm == "masked", "--train-loss-norm", "unknown '" + loss_norm + "'",
       "use elbo or masked");
  need(moe_routing == "token" || moe_routing == "block", "--moe-routing", "training supports token or block, got '" +
       moe_routing + "'", "");
  need(distill_weight >= 0 && distill_weight <= 1, "--train-distill-weight", "must be in [0, 1]",
       "1 = pure distillation, 0 = plain CE (the KL is still logged)");
  need(distill_temperature > 0 && std::isfinite(distill_temperature), "--train-distill-temperature",
       "must be a positive number", "1 is the usual choice");
}

moe::InferenceRouting TrainParams::routing() const {
  moe::InferenceRouting r;
  r.policy = moe_routing == "block" ? moe::RoutingPolicy::kBlock : moe::RoutingPolicy::kToken;
  r.block_top_p = block_top_p;
  r.block_min_experts = block_min_experts;
  r.block_chunk = block_chunk;
  return r;
}

double TrainParams::lr_at(int64_t step, double progress) const {
  if (warmup_steps > 0 && step < warmup_steps)
    return lr * static_cast<double>(step + 1) / static_cast<double>(warmup_steps);
  const double min_lr = lr * min_lr_ratio;
  progress = std::min(1.0, std::max(0.0, progress));
  if (lr_schedule == "constant") return lr;
  if (lr_schedule == "wsd") {
    const double start = 1.0 - wsd_decay_frac;
    if (progress <= start || wsd_decay_frac <= 0) return lr;
    return lr + (min_lr - lr) * (progress - start) / wsd_decay_frac;
  }
  return min_lr + 0.5 * (lr - min_lr) * (1.0 + std::cos(M_PI * progress));
}

}  // namespace ecdlm
