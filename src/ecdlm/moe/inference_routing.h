// Routing policies chosen per run at inference (dmoe-llada2.md §1.2, §1.6):
//   token  the model's own routing (token choice, or expert choice for EC models);
//   block  dMoE: every aligned chunk of the input votes an expert coreset (top-p of the summed,
//          normalized biased top-k scores, at least G experts); each token then runs the model's
//          group-limited top-k restricted to its chunk's coreset, gates from the unbiased scores;
//   topk   token choice with a smaller k (the "top-4" baseline), same renormalization and scale;
//   des-s, des-v  OUR INTERPRETATION of the paper's DES-S / DES-V baselines (no code released):
//          per-chunk coresets from sequence-level top pairs / saliency-weighted votes, see des_routing.h;
//   ec     expert choice with capacity k(r): applied when the model is loaded (a TC checkpoint is
//          converted by a router swap, see train/retrofit.h), so MoE layers only see token/block/topk.
#pragma once
#include <torch/torch.h>

#include <string>

#include "ecdlm/moe/moe.h"
#include "ecdlm/moe/moe_config.h"

namespace ecdlm::moe {

enum class RoutingPolicy { kToken, kExpertChoice, kBlock, kTopK, kDesS, kDesV };
RoutingPolicy parse_routing_policy(const std::string& name);  // UserError listing the names
std::string routing_policy_name(RoutingPolicy p);

struct InferenceRouting {
  RoutingPolicy policy = RoutingPolicy::kToken;
  double block_top_p = 0.6;        // coreset mass (dMoE core_threshold)
  int64_t block_min_experts = 16;  // G: the coreset never has fewer experts (dMoE eval gate)
  int64_t block_chunk = 32;        // tokens per vote, aligned to the start of the forward's input
  int64_t topk_cap = 4;            // k of the topk policy
  // DES baselines (des_routing.h). Defaults calibrated on the synthetic LLaDA2.0-mini-shaped bench
  // model (half-decoded 32-token block): 39.5 / 34.5 unique experts against token routing's 66.1,
  // as the paper's DES-S / DES-V use 41.4 / 37.0 against 70.6 (ratio 0.3 / threshold 0.2 give 17 / 12).
  double des_s_ratio = 0.65;       // DES-S: kept (token, expert) pairs per chunk / (tokens * k)
  double des_v_threshold = 0.07;   // DES-V: keep experts with a summed vote >= this x the best one
  int64_t des_min_experts = 0;     // both: minimum coreset size (0 = the model's k)
  int64_t des_chunk = 32;          // both: tokens per coreset, aligned to the forward's input

  bool uses_coreset() const {
    return policy == RoutingPolicy::kBlock || policy == RoutingPolicy::kDesS || policy == RoutingPolicy::kDesV;
  }
  int64_t coreset_chunk() const { return policy == RoutingPolicy::kBlock ? block_chunk : des_chunk; }

  // UserError naming the flag: p outside (0, 1], G outside [1, E], chunk < 1, cap outside [1, k],
  // DES ratio <= 0, threshold outside [0, 1], min experts outside [0, E], block/topk/des on an
  // expert-choice model. (A checkpoint's default policy is model/'s default_routing, moe_dlm.h.)
  void validate(const MoeConfig& c) const;
  void validate_block(const MoeConfig& c) const;  // p, G and chunk only
};

// dMoE coreset (§1.2 steps 3-7). biased_BLE f32 [B, L, E] (sigmoid/softmax scores + expert_bias).
// Each token's plain (not group-limited) top-k biased scores are summed over its chunk, the sum
// is normalized, and the shortest descending prefix whose mass exceeds p is kept (the top expert
// always), grown to the top-G if smaller. A last chunk shorter than `chunk` votes with the tokens
// it has. Equal votes rank by lower expert id. Returns bool [B, ceil(L / chunk), E].
torch::Tensor block_coreset(const torch::Tensor& biased_BLE, int64_t k, double top_p, int64_t min_experts,
                            int64_t chunk);

// Expands a per-chunk mask [B, NC, E] to tokens: bool [B * L, E].
torch::Tensor coreset_per_token(const torch::Tensor& coreset_BCE, int64_t L, int64_t chunk);

// Distinct experts (with a non-zero gate) used by rows [row0, row0 + n) of each sequence of a
// plan over B sequences of L tokens: f64 [B], and averaged over the sequences.
torch::Tensor unique_experts_B(const RoutingPlan& plan, int64_t B, int64_t L, int64_t row0, int64_t n);
double unique_experts(const RoutingPlan& plan, int64_t B, int64_t L, int64_t row0, int64_t n);

}  // namespace ecdlm::moe
