// The hook through which a MoE layer runs its routed experts across ranks (expert parallelism).
// dist/expert_parallel.h implements it; moe/ sees only this interface, so moe/ never includes
// dist/. The trainer sets one (MoeBlock::set_expert_exchange: the child module "expert_exchange")
// on every MoeBlock whose `experts` hold a shard (a parameter-free module: checkpoints and state
// dicts do not change, and it lives exactly as long as the layer). Without it, the experts run here.
#pragma once
#include <torch/torch.h>

#include "ecdlm/moe/experts.h"
#include "ecdlm/moe/moe.h"

namespace ecdlm::moe {

class ExpertExchange : public torch::nn::Module {
 public:
  // x_TD [T, D], a plan over all E experts, this rank's expert shard -> f32 [T, D] (as run_plan).
  virtual torch::Tensor run(const torch::Tensor& x_TD, const RoutingPlan& plan, Experts& local) = 0;
};

// The name under which the exchange is registered in a MoeBlock.
inline constexpr const char* kExpertExchangeModule = "expert_exchange";

}  // namespace ecdlm::moe
