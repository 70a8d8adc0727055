// Retrofit (ec-dlm.md §5.3): turn a token-choice checkpoint into expert choice by replacing only
// the router policy. The gate weights are reused as the EC scoring weights; nothing else changes.
#pragma once
#include <string>

#include "ecdlm/model/config.h"
#include "ecdlm/model/moe_dlm.h"

namespace ecdlm {

struct RetrofitParams {
  std::string schedule = "static";  // EC capacity schedule k(r)
  double k = 0.0;                   // static k (0 = the TC model's num_experts_per_tok)
  double k_min = 0.0, k_max = 0.0;  // non-static schedules
  double z_loss_coeff = 1e-3;
  bool scaling_factor = true;       // phi(n) norm matching (needs a shared expert)
};

// The EC config for a TC model config. Throws UserError if `tc` has no MoE layers or is EC already.
ModelConfig retrofit_config(const ModelConfig& tc, const RetrofitParams& p);

// Which parameters train: "all", "router" (the gates only) or "router+experts".
// Returns the number of trainable parameters. Unknown value -> UserError.
int64_t set_trainable(MoeDlm& model, const std::string& which);

}  // namespace ecdlm
