// Every training setting in one struct with in-class defaults. Precedence: config file, then
// CLI flag overrides; the effective set is logged once and saved with each run.
#pragma once
#include <nlohmann/json.hpp>

#include <string>

#include "ecdlm/eval/elbo.h"
#include "ecdlm/moe/inference_routing.h"

namespace ecdlm {

struct TrainParams {
  std::string data_dir = "data/brown";     // output of `ecdlm prepare-data`
  std::string out_dir = "runs/default";
  std::string init_from;                   // start from this model dir's weights (retrofit)
  std::string trainable = "all";           // all | router | router+experts
  int64_t batch_size = 16;
  int64_t seq_len = 256;
  int64_t grad_accum = 1;
  int64_t max_steps = 0;                   // 0: no step limit (needs a time budget)
  double time_budget_s = 0.0;              // 0: no time limit (needs max_steps)
  double lr = 2e-3;
  double min_lr_ratio = 0.1;
  int64_t warmup_steps = 100;
  std::string lr_schedule = "cosine";      // cosine | wsd | constant
  double wsd_decay_frac = 0.2;             // WSD: final fraction spent decaying
  double weight_decay = 0.1;
  double beta1 = 0.9, beta2 = 0.95, adam_eps = 1e-8;
  double grad_clip = 1.0;
  bool inverse_r = true;                   // 1/r ELBO weight (false: "stable training")
  // dMoE "learnable block experts" fine-tune (dmoe-llada2.md §1.4): t ~ U[mask_ratio_min,
  // mask_ratio_max), loss = CE over masked tokens / their count, block routing in the forward.
  double mask_ratio_min = 0.0, mask_ratio_max = 1.0;
  std::string loss_norm = "elbo";          // elbo (1/r-weighted, / B*L) | masked (/ #masked, no 1/r)
  std::string moe_routing = "token";       // token | block (also used by the periodic evals)
  double block_top_p = 0.6;
  int64_t block_min_experts = 16;
  int64_t block_chunk = 32;
  // Self-distillation (dMoE's learnable fine-tune): a frozen teacher model dir (same architecture
  // and vocabulary) runs its own token routing on the same x_t; loss = w * T^2 * KL(teacher ||
  // student) over masked tokens + (1 - w) * CE. Empty: plain CE.
  std::string distill_from;
  double distill_weight = 1.0;
  double distill_temperature = 1.0;
  bool bf16 = true;                        // CPU autocast: bf16 matmuls, fp32 master weights
  uint64_t seed = 1234;
  int64_t log_every = 10;
  int64_t eval_every = 200;
  int64_t save_every = 200;
  int64_t keep_last = 2;
  EvalParams eval;
  int64_t final_eval_windows = 0;          // 0: same as eval.max_windows
  int64_t halt_at_step = 0;                // >0: checkpoint and stop here, as if interrupted
                                           //     (the schedule still follows max_steps)

  nlohmann::json to_json() const;
  // Overrides fields present in `j` (unknown keys -> UserError naming `src` and the key).
  void update_from_json(const nlohmann::json& j, const std::string& src);
  void validate() const;
  // Learning rate at `progress` in [0, 1] of the run after `step` steps.
  double lr_at(int64_t step, double progress) const;
  // The MoE routing policy the forwards use (token = the model's own).
  moe::InferenceRouting routing() const;
};

}  // namespace ecdlm
