// MoE building blocks: router -> RoutingPlan -> dispatch -> experts -> combine.
//
// Shape legend (used in every tensor name under moe/ and model/):
//   B batch, L sequence length, T = B*L flat tokens, D hidden, F expert FFN width,
//   E routed experts, K experts per token (token choice), C capacity (slots per expert),
//   N = slots per expert in a plan (EC: B*C; TC with capacity: C), V vocabulary.
#pragma once
#include <torch/torch.h>

#include <vector>

namespace ecdlm::moe {

// Routing statistics of one MoE layer forward. Tensors, so collecting them costs no host sync.
struct RoutingStats {
  torch::Tensor tokens_per_expert_E;   // int64 [E] (token, expert) pairs actually computed
  torch::Tensor dropped_pairs;         // int64 scalar: TC pairs removed by the capacity limit
  torch::Tensor zero_expert_tokens;    // int64 scalar: tokens that reach no routed expert
  torch::Tensor capacity_B;            // int64 [B] EC capacity used per sequence (undefined for TC)
  int64_t num_tokens = 0;
};

// What a router decides. Two layouts:
//  - expert-major (EC, TC with capacity): fixed-shape slots, one bmm over [E, N, D];
//  - token-major (dropless TC): K experts per token.
struct RoutingPlan {
  bool expert_major = true;
  torch::Tensor token_EN;   // int64 [E, N]: flat token row in x_TD of each slot
  torch::Tensor gate_EN;    // f32 [E, N]: gate weight of each slot, 0 for invalid slots
  torch::Tensor idx_TK;     // int64 [T, K]: expert ids (token-major)
  torch::Tensor gate_TK;    // f32 [T, K]: gate weights, 0 for dropped pairs (token-major)
  torch::Tensor aux_loss;   // f32 scalar: z-loss + load-balancing loss (training), or undefined
  torch::Tensor load_E;     // int64 [E]: pre-drop (token, expert) counts, for loss-free bias
  torch::Tensor coreset_BCE;  // bool [B, chunks, E]: block routing's coresets (else undefined)
  RoutingStats stats;
};

}  // namespace ecdlm::moe
