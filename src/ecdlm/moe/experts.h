// Routed experts with stacked weights, so one expert is one contiguous slice:
// gate_proj / up_proj [E, F, D], down_proj [E, D, F] (the "veomni" stacked checkpoint layout).
#pragma once
#include <torch/torch.h>

#include "ecdlm/moe/moe.h"

namespace ecdlm::moe {

class ExpertsImpl : public torch::nn::Module {
 public:
  ExpertsImpl(int64_t num_experts, int64_t hidden, int64_t inter);
  // All experts at once over fixed-size slots: x_END [E, N, D] -> [E, N, D] (one bmm per matrix).
  torch::Tensor forward_slots(const torch::Tensor& x_END);
  // One expert: x_ND [N, D] -> [N, D].
  torch::Tensor forward_one(int64_t e, const torch::Tensor& x_ND);
  int64_t num_experts() const { return gate_proj.size(0); }

  torch::Tensor gate_proj, up_proj, down_proj;
};
TORCH_MODULE(Experts);

// Dispatch: gather slot inputs. x_TD [T, D], token_EN int64 [E, N] -> [E, N, D].
torch::Tensor dispatch_slots(const torch::Tensor& x_TD, const torch::Tensor& token_EN);
// Combine: y_TD f32 [T, D] = sum over slots of gate * y (deterministic index_add).
torch::Tensor combine_slots(const torch::Tensor& y_END, const torch::Tensor& gate_EN,
                            const torch::Tensor& token_EN, int64_t T);
// Dropless token-major execution: pairs sorted by expert, one GEMM per non-empty expert.
torch::Tensor run_token_major(const torch::Tensor& x_TD, const torch::Tensor& idx_TK,
                              const torch::Tensor& gate_TK, Experts& experts);
// Any plan through the fast path (bmm for expert-major, grouped GEMM for token-major): f32 [T, D].
torch::Tensor run_plan(const torch::Tensor& x_TD, const RoutingPlan& plan, Experts& experts);
// Slow reference: for each expert, gather its pairs, run it alone, weight, add. f32 [T, D].
torch::Tensor run_plan_reference(const torch::Tensor& x_TD, const RoutingPlan& plan,
                                 Experts& experts);

}  // namespace ecdlm::moe
