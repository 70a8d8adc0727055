#include "ecdlm/moe/moe_block.h"

#include "ecdlm/moe/des_routing.h"
#include "ecdlm/moe/expert_exchange.h"
#include "ecdlm/moe/router_infer.h"
#include "ecdlm/moe/scaling.h"
#include "ecdlm/nn/init.h"
#include "ecdlm/util/error.h"
#include "ecdlm/util/profile.h"

namespace ecdlm::moe {

RouterGateImpl::RouterGateImpl(int64_t E, int64_t D, bool with_bias) {
  weight = register_parameter("weight", torch::empty({E, D}));
  torch::NoGradGuard ng;
  if (weight_init_enabled()) weight.normal_(0.0, 0.02);
  if (with_bias) expert_bias = register_buffer("expert_bias", torch::zeros({E}));
}

MoeBlockImpl::MoeBlockImpl(const MoeConfig& c) : router_type_(c.router_type) {
  gate = register_module("gate", RouterGate(c.num_experts, c.hidden_size, c.enable_expert_bias));
  experts = register_module("experts", Experts(c.num_experts, c.hidden_size, c.moe_intermediate_size));
  if (c.shared_expert_intermediate_size > 0)
    shared_experts = register_module(
        "shared_experts", SwiGluMlp(c.hidden_size, c.shared_expert_intermediate_size));
  tc_.k = c.num_experts_per_tok;
  tc_.score = c.score_function;
  tc_.n_group = c.n_group;
  tc_.topk_group = c.topk_group;
  tc_.norm_topk_prob = c.norm_topk_prob;
  tc_.scaling = c.routed_scaling_factor;
  tc_.bias_in_gate = c.expert_bias_in_gate;
  tc_.capacity_factor = c.capacity_factor;
  tc_.aux_loss_coeff = c.aux_loss_coeff;
  tc_.z_loss_coeff = c.z_loss_coeff;
  ec_.z_loss_coeff = c.z_loss_coeff;
  if (c.router_type == RouterType::kExpertChoice && c.enable_scaling_factor &&
      c.shared_expert_intermediate_size > 0) {
    phi_ = ec_scaling_table(c.num_experts, static_cast<double>(c.shared_expert_intermediate_size) /
                                               static_cast<double>(c.moe_intermediate_size));
  }
}

RoutingPlan MoeBlockImpl::route(const torch::Tensor& x_BLD, const MoeForwardArgs& args) {
  prof::Scope ps(prof::kRouter);
  const auto B = x_BLD.size(0), L = x_BLD.size(1), D = x_BLD.size(2);
  auto logits_TE = router_logits(x_BLD.reshape({B * L, D}), gate->weight);
  if (router_type_ == RouterType::kExpertChoice) {
    if (!args.capacity_B.defined())
      throw std::invalid_argument("expert-choice MoE layer needs capacity_B");
    ExpertChoiceParams p = ec_;
    p.compute_losses = is_training();
    p.phi = phi_.empty() ? nullptr : &phi_;
    return route_expert_choice(logits_TE.view({B, L, -1}), args.capacity_B, p);
  }
  TokenChoiceParams p = tc_;
  p.compute_losses = is_training();
  // Inference takes the one-pass router; training and the reference path keep the torch ops.
  const bool one_pass = !is_training() && !args.reference && route_infer_applies(logits_TE, p);
  auto route_tc = [&](const torch::Tensor& allowed_TE) {
    return one_pass ? route_token_choice_infer(logits_TE, gate->expert_bias, p, allowed_TE)
                    : route_token_choice(logits_TE, gate->expert_bias, p, allowed_TE);
  };
  const InferenceRouting* ir = args.routing;
  if (ir && ir->policy == RoutingPolicy::kTopK) p.k = ir->topk_cap;
  if (ir && ir->policy == RoutingPolicy::kBlock) {
    auto biased_TE = biased_scores(logits_TE, gate->expert_bias, p.score);
    auto coreset_BCE = block_coreset(biased_TE.view({B, L, -1}), p.k, ir->block_top_p, ir->block_min_experts,
                                     ir->block_chunk);
    auto plan = route_tc(coreset_per_token(coreset_BCE, L, ir->block_chunk));
    plan.coreset_BCE = coreset_BCE;
    return plan;
  }
  if (ir && (ir->policy == RoutingPolicy::kDesS || ir->policy == RoutingPolicy::kDesV)) {
    const int64_t min_experts = ir->des_min_experts > 0 ? ir->des_min_experts : p.k;
    auto biased_TE = biased_scores(logits_TE, gate->expert_bias, p.score);
    torch::Tensor coreset_BCE;
    if (ir->policy == RoutingPolicy::kDesS) {
      coreset_BCE = des_seq_coreset(biased_TE.view({B, L, -1}), p.k, ir->des_s_ratio, min_experts, ir->des_chunk);
    } else {
      // Votes: each token's own routing choice, weighted by the scores its gates come from.
      auto idx_TK = select_topk_grouped(biased_TE, p.k, p.n_group, p.topk_group);
      auto w_TE = p.bias_in_gate ? biased_TE : biased_scores(logits_TE, torch::Tensor(), p.score);
      auto vote_TE = torch::zeros_like(w_TE).scatter(1, idx_TK, w_TE.gather(1, idx_TK));
      coreset_BCE = des_vote_coreset(vote_TE.view({B, L, -1}), ir->des_v_threshold, min_experts, ir->des_chunk);
    }
    auto plan = route_tc(coreset_per_token(coreset_BCE, L, ir->des_chunk));
    plan.coreset_BCE = coreset_BCE;
    return plan;
  }
  return route_tc(torch::Tensor());
}

torch::Tensor MoeBlockImpl::forward(const torch::Tensor& x_BLD, const MoeForwardArgs& args) {
  const auto B = x_BLD.size(0), L = x_BLD.size(1), D = x_BLD.size(2);
  auto plan = route(x_BLD, args);
  auto x_TD = x_BLD.reshape({B * L, D});
  torch::Tensor y_BLD;
  {
    prof::Scope ps(prof::kExperts);
    // Expert parallel: the trainer set an exchange and `experts` holds this rank's shard.
    auto y_TD = exchange_        ? exchange_->run(x_TD, plan, experts)
                : args.reference ? run_plan_reference(x_TD, plan, experts)
                                 : run_plan(x_TD, plan, experts);
    // Weighted sum in fp32, cast back, then the shared expert (as the LLaDA2 reference).
    y_BLD = y_TD.to(x_BLD.scalar_type()).view({B, L, D});
  }
  if (!shared_experts.is_empty()) {
    prof::Scope ps(prof::kShared);
    y_BLD = y_BLD + shared_experts(x_BLD);
  }
  last_stats_ = plan.stats;
  last_aux_loss_ = plan.aux_loss;
  last_plan_ = plan;
  last_plan_.aux_loss = torch::Tensor();  // keep no autograd graph alive
  if (last_plan_.gate_TK.defined()) last_plan_.gate_TK = last_plan_.gate_TK.detach();
  if (last_plan_.gate_EN.defined()) last_plan_.gate_EN = last_plan_.gate_EN.detach();
  if (is_training() && plan.load_E.defined()) {
    load_accum_E_ = load_accum_E_.defined() ? load_accum_E_ + plan.load_E : plan.load_E.clone();
  }
  return y_BLD;
}

void MoeBlockImpl::set_expert_exchange(std::shared_ptr<ExpertExchange> exchange) {
  if (!exchange) throw std::invalid_argument("MoeBlock::set_expert_exchange: null exchange");
  if (exchange_) throw std::invalid_argument("MoeBlock::set_expert_exchange: the layer already has one");
  exchange_ = register_module(kExpertExchangeModule, std::move(exchange)).get();
}

void MoeBlockImpl::update_expert_bias(double rate) {
  if (!load_accum_E_.defined() || !gate->expert_bias.defined()) return;
  torch::NoGradGuard ng;
  auto load = load_accum_E_.to(torch::kFloat32);
  gate->expert_bias.add_(rate * torch::sign(load.mean() - load));
  load_accum_E_ = torch::Tensor();
}

}  // namespace ecdlm::moe
