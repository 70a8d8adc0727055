// The model's side of the MoE unit: MoeConfig from ModelConfig (every field the MoE layer reads),
// the checkpoint's default routing, the TC scaling factor stored in the config, and the inference
// policies through a model forward.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "../test_models.h"
#include "ecdlm/model/moe_dlm.h"
#include "ecdlm/moe/inference_routing.h"
#include "ecdlm/moe/scaling.h"
#include "ecdlm/util/error.h"

using namespace ecdlm;

namespace {

void expect_same(const moe::MoeConfig& a, const moe::MoeConfig& b) {
  EXPECT_EQ(a.hidden_size, b.hidden_size);
  EXPECT_EQ(a.num_experts, b.num_experts);
  EXPECT_EQ(a.moe_intermediate_size, b.moe_intermediate_size);
  EXPECT_EQ(a.shared_expert_intermediate_size, b.shared_expert_intermediate_size);
  EXPECT_EQ(a.router_type, b.router_type);
  EXPECT_EQ(a.num_experts_per_tok, b.num_experts_per_tok);
  EXPECT_EQ(a.score_function, b.score_function);
  EXPECT_EQ(a.n_group, b.n_group);
  EXPECT_EQ(a.topk_group, b.topk_group);
  EXPECT_EQ(a.norm_topk_prob, b.norm_topk_prob);
  EXPECT_EQ(a.routed_scaling_factor, b.routed_scaling_factor);
  EXPECT_EQ(a.enable_expert_bias, b.enable_expert_bias);
  EXPECT_EQ(a.expert_bias_in_gate, b.expert_bias_in_gate);
  EXPECT_EQ(a.capacity_factor, b.capacity_factor);
  EXPECT_EQ(a.aux_loss_coeff, b.aux_loss_coeff);
  EXPECT_EQ(a.z_loss_coeff, b.z_loss_coeff);
  EXPECT_EQ(a.enable_scaling_factor, b.enable_scaling_factor);
  EXPECT_EQ(a.capacity_schedule, b.capacity_schedule);
  EXPECT_EQ(a.capacity_k_min, b.capacity_k_min);
  EXPECT_EQ(a.capacity_k_max, b.capacity_k_max);
  EXPECT_EQ(a.capacity_gaussian_sigma, b.capacity_gaussian_sigma);
}

}  // namespace

TEST(MoeConfigFrom, DefaultsEqualModelConfigs) { expect_same(moe_config_from(ModelConfig()), moe::MoeConfig()); }

TEST(MoeConfigFrom, CarriesEveryFieldTheMoeLayerReads) {
  ModelConfig c;
  c.hidden_size = 40;
  c.num_experts = 12;
  c.moe_intermediate_size = 24;
  c.shared_expert_intermediate_size = 0;
  c.router_type = RouterType::kExpertChoice;
  c.num_experts_per_tok = 3;
  c.score_function = ScoreFunction::kSigmoid;
  c.n_group = 4;
  c.topk_group = 2;
  c.norm_topk_prob = false;
  c.routed_scaling_factor = 2.5;
  c.moe_router_enable_expert_bias = true;
  c.expert_bias_in_gate = true;
  c.moe_capacity_factor = 1.25;
  c.moe_aux_loss_coeff = 0.01;
  c.moe_z_loss_coeff = 0.002;
  c.moe_enable_scaling_factor = false;
  c.moe_capacity_schedule = "cosine";
  c.moe_capacity_k_min = 1.0;
  c.moe_capacity_k_max = 4.0;
  c.moe_capacity_gaussian_sigma = 0.3;
  moe::MoeConfig want;
  want.hidden_size = 40;
  want.num_experts = 12;
  want.moe_intermediate_size = 24;
  want.shared_expert_intermediate_size = 0;
  want.router_type = moe::RouterType::kExpertChoice;
  want.num_experts_per_tok = 3;
  want.score_function = moe::ScoreFn::kSigmoid;
  want.n_group = 4;
  want.topk_group = 2;
  want.norm_topk_prob = false;
  want.routed_scaling_factor = 2.5;
  want.enable_expert_bias = true;
  want.expert_bias_in_gate = true;
  want.capacity_factor = 1.25;
  want.aux_loss_coeff = 0.01;
  want.z_loss_coeff = 0.002;
  want.enable_scaling_factor = false;
  want.capacity_schedule = "cosine";
  want.capacity_k_min = 1.0;
  want.capacity_k_max = 4.0;
  want.capacity_gaussian_sigma = 0.3;
  expect_same(moe_config_from(c), want);
  const auto s = moe::make_schedule(moe_config_from(c));
  EXPECT_EQ(s.schedule(), moe::Schedule::kCosine);
  EXPECT_EQ(s.k_min(), 1.0);
  EXPECT_EQ(s.k_max(), 4.0);
}

// Loss-free balancing needs the gate's bias buffer even when the checkpoint has none.
TEST(MoeConfigFrom, LossFreeBalancingGivesTheGateItsBias) {
  auto c = test::small_tc_config();
  EXPECT_FALSE(moe_config_from(c).enable_expert_bias);
  EXPECT_FALSE(MoeDlm(c)->moe_blocks().front()->gate->expert_bias.defined());
  c.moe_loss_free_bias_rate = 0.01;
  EXPECT_TRUE(moe_config_from(c).enable_expert_bias);
  for (auto& blk : MoeDlm(c)->moe_blocks()) EXPECT_TRUE(blk->gate->expert_bias.defined());
}

TEST(DefaultRouting, BlockForDmoeCheckpointsElseToken) {
  ModelConfig c;
  EXPECT_EQ(default_routing(c).policy, moe::RoutingPolicy::kToken);
  c.dmoe_mode = "aggregate";
  EXPECT_EQ(default_routing(c).policy, moe::RoutingPolicy::kBlock);
  EXPECT_EQ(default_routing(c).block_top_p, moe::InferenceRouting().block_top_p);
  c.dmoe_core_threshold = 0.8;
  EXPECT_EQ(default_routing(c).block_top_p, 0.8);
}

TEST(ApplyTcScalingFactor, OnlyTokenChoiceWithNormMatchingAndASharedExpert) {
  auto c = test::small_tc_config();  // TC, shared expert 16, experts of 16
  apply_tc_scaling_factor(c);
  EXPECT_DOUBLE_EQ(c.routed_scaling_factor, moe::tc_scaling_factor(8, 2, 1.0));
  for (int v = 0; v < 3; ++v) {
    auto o = test::small_tc_config(48, v == 2 ? 0 : 16);
    if (v == 0) o.router_type = RouterType::kExpertChoice;
    if (v == 1) o.moe_enable_scaling_factor = false;
    apply_tc_scaling_factor(o);
    EXPECT_EQ(o.routed_scaling_factor, 1.0) << v;
  }
}

TEST(DesRouting, ModelForwardPolicies) {
  torch::manual_seed(13);
  auto cfg = test::small_tc_config();
  MoeDlm model(cfg);
  model->eval();
  torch::NoGradGuard ng;
  auto ids = torch::randint(0, cfg.vocab_size - 2, {2, 32}, torch::kInt64);
  ForwardOptions o;
  moe::InferenceRouting r;
  for (auto pol : {moe::RoutingPolicy::kDesS, moe::RoutingPolicy::kDesV}) {
    r.policy = pol;
    r.des_chunk = 16;
    r.des_min_experts = 3;
    r.des_s_ratio = 0.25;
    r.des_v_threshold = 0.5;
    r.validate(moe_config_from(cfg));
    o.routing = &r;
    auto logits = model->forward(ids, o).logits_BLV;
    EXPECT_TRUE(torch::isfinite(logits).all().item<bool>());
    for (auto& blk : model->moe_blocks()) {
      const auto& plan = blk->last_plan();
      ASSERT_TRUE(plan.coreset_BCE.defined());
      EXPECT_EQ(plan.coreset_BCE.sizes(), (std::vector<int64_t>{2, 2, cfg.num_experts}));
      EXPECT_GE(plan.coreset_BCE.sum(-1).min().item<int64_t>(), 3);
      EXPECT_TRUE(moe::coreset_per_token(plan.coreset_BCE, 32, 16).gather(1, plan.idx_TK).all().item<bool>());
    }
  }
}
