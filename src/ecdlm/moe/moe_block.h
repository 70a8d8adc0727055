// The MoE FFN of one layer: gate (router weights), stacked experts, optional shared expert.
// Routing is decided per forward from explicit inputs (capacity_B); statistics are
// non-persistent and the load-balance accumulator only changes in training mode.
#pragma once
#include <torch/torch.h>

#include <memory>

#include "ecdlm/moe/experts.h"
#include "ecdlm/moe/inference_routing.h"
#include "ecdlm/moe/moe_config.h"
#include "ecdlm/moe/router.h"
#include "ecdlm/nn/linear.h"

namespace ecdlm::moe {

class ExpertExchange;  // moe/expert_exchange.h

// `mlp.gate`: weight [E, D] and, when enabled, the selection-only `expert_bias` [E] buffer.
class RouterGateImpl : public torch::nn::Module {
 public:
  RouterGateImpl(int64_t num_experts, int64_t hidden, bool with_bias);
  torch::Tensor weight, expert_bias;
};
TORCH_MODULE(RouterGate);

struct MoeForwardArgs {
  torch::Tensor capacity_B;  // int64 [B]: expert-choice capacity per sequence (EC only)
  bool reference = false;    // slow per-expert loop instead of the fast path
  const InferenceRouting* routing = nullptr;  // block / topk policies (null = the model's own)
};

class MoeBlockImpl : public torch::nn::Module {
 public:
  explicit MoeBlockImpl(const MoeConfig& cfg);
  // x_BLD [B, L, D] -> [B, L, D] (input dtype). Sets last_plan_stats() and last_aux_loss().
  torch::Tensor forward(const torch::Tensor& x_BLD, const MoeForwardArgs& args);
  // Router only: the plan this layer would execute for x_BLD.
  RoutingPlan route(const torch::Tensor& x_BLD, const MoeForwardArgs& args);

  // Expert parallel: registers `exchange` as the parameter-free child "expert_exchange" (state
  // dicts unchanged) and runs the routed experts through it from now on; `experts` must then hold
  // this rank's shard.
  void set_expert_exchange(std::shared_ptr<ExpertExchange> exchange);

  // Loss-free balancing: bias_e += rate * sign(mean(load) - load_e) over the loads accumulated
  // since the last call (training forwards only); then resets the accumulator.
  void update_expert_bias(double rate);

  const RoutingStats& last_stats() const { return last_stats_; }
  // The last forward's plan (routing only: idx/gates/slots/coresets) for per-forward statistics.
  const RoutingPlan& last_plan() const { return last_plan_; }
  const torch::Tensor& last_aux_loss() const { return last_aux_loss_; }
  RouterType router_type() const { return router_type_; }

  RouterGate gate{nullptr};
  Experts experts{nullptr};
  SwiGluMlp shared_experts{nullptr};

 private:
  RouterType router_type_;
  TokenChoiceParams tc_;
  ExpertChoiceParams ec_;
  std::vector<float> phi_;
  RoutingStats last_stats_;
  RoutingPlan last_plan_;
  torch::Tensor last_aux_loss_;
  torch::Tensor load_accum_E_;
  ExpertExchange* exchange_ = nullptr;  // the registered child, kept so forward does not search for it
};
TORCH_MODULE(MoeBlock);

}  // namespace ecdlm::moe
