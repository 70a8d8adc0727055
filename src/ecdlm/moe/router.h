// Routers turn router inputs into a RoutingPlan. They are free functions over explicit tensors and
// params, so EC, TC and the block-coreset policy are interchangeable and testable in isolation.
#pragma once
#include <torch/torch.h>

#include "ecdlm/moe/moe.h"
#include "ecdlm/moe/moe_config.h"

namespace ecdlm::moe {

struct TokenChoiceParams {
  int64_t k = 2;
  ScoreFn score = ScoreFn::kSoftmax;
  int64_t n_group = 1;             // group-limited routing: keep topk_group groups,
  int64_t topk_group = 1;          //   scored by the sum of their top-2 biased scores
  bool norm_topk_prob = true;      // renormalize gates over the chosen k
  double scaling = 1.0;            // routed_scaling_factor
  bool bias_in_gate = false;       // LLaDA-MoE: biased scores are also the weights
  double capacity_factor = 0.0;    // 0 = dropless; else C = ceil(T*k/E*cf) per expert
  double aux_loss_coeff = 0.0;     // Switch load-balancing loss
  double z_loss_coeff = 0.0;
  bool compute_losses = false;     // training only
};

struct ExpertChoiceParams {
  double z_loss_coeff = 0.0;
  bool compute_losses = false;
  const std::vector<float>* phi = nullptr;  // phi(n) table of size >= E+1, or nullptr for none
};

// Router logits in fp32 regardless of autocast: x_TD [T, D], w_ED [E, D] -> [T, E].
torch::Tensor router_logits(const torch::Tensor& x_TD, const torch::Tensor& w_ED);

// Token choice over the T tokens of the batch (the capacity pool is the whole micro-batch).
// logits_TE f32 [T, E]; bias_E f32 [E] or undefined. Capacity (if any) is computed from T.
// allowed_TE (bool, optional) restricts each token to a subset (the dMoE block coreset).
RoutingPlan route_token_choice(const torch::Tensor& logits_TE, const torch::Tensor& bias_E,
                               const TokenChoiceParams& p, const torch::Tensor& allowed_TE = torch::Tensor());

// Selection scores: score function of the logits plus the selection-only expert bias (fp32).
torch::Tensor biased_scores(const torch::Tensor& logits_TE, const torch::Tensor& bias_E, ScoreFn score);

// Token-choice selection alone: biased scores -> group-limited top-k. Returns idx_TK.
// `allowed_TE` (bool, optional) masks experts to -inf before group scoring (block coreset); then
// ties break toward the lower index (groups and experts), and if fewer than k allowed experts
// survive the group limit the rest are filled from the lowest-index disallowed ones, as the
// reference gate would pick -inf entries, but deterministically.
torch::Tensor select_topk_grouped(const torch::Tensor& biased_TE, int64_t k, int64_t n_group,
                                  int64_t topk_group,
                                  const torch::Tensor& allowed_TE = torch::Tensor());

// Expert choice (ec-dlm.md §2): per sequence, each expert takes the capacity_B[b] tokens with the
// largest raw logit. logits_BLE f32 [B, L, E]; capacity_B int64 [B] with 1 <= C_b <= L.
// Ties: the lower position wins (stable sort), so results are deterministic.
RoutingPlan route_expert_choice(const torch::Tensor& logits_BLE, const torch::Tensor& capacity_B,
                                const ExpertChoiceParams& p);

// Switch load-balancing loss: coeff * E / (T^2 k) * sum_e P_e f_e, P from full softmax.
torch::Tensor switch_aux_loss(const torch::Tensor& logits_TE, const torch::Tensor& load_E,
                              int64_t k, double coeff);
// coeff * mean_t(logsumexp_e logits)^2
torch::Tensor z_loss(const torch::Tensor& logits_TE, double coeff);

}  // namespace ecdlm::moe
