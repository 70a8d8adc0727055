// DES-S / DES-V (our interpretation, src/ecdlm/moe/des_routing.h): hand-worked coresets and the
// invariants the rules promise (limits equal token routing, monotone in the knob, minimum size,
// routing inside the coreset, per sequence), and their validation. Through a model forward:
// tests/unit/test_model_moe.cpp.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "ecdlm/moe/des_routing.h"
#include "ecdlm/moe/inference_routing.h"
#include "ecdlm/moe/moe_config.h"
#include "ecdlm/moe/router.h"
#include "ecdlm/util/error.h"

using namespace ecdlm;

namespace {

torch::Tensor mask_of(std::vector<int> v) {
  return torch::tensor(std::vector<int64_t>(v.begin(), v.end()), torch::kInt64).to(torch::kBool);
}

// Each token's expert set, sorted (routing order is not part of the contract).
torch::Tensor sorted_idx(const moe::RoutingPlan& p) { return std::get<0>(p.idx_TK.sort(-1)); }

moe::TokenChoiceParams grouped_params() {
  moe::TokenChoiceParams p;
  p.k = 4;
  p.score = moe::ScoreFn::kSigmoid;
  p.n_group = 4;
  p.topk_group = 2;
  return p;
}

}  // namespace

TEST(DesSeq, HandWorkedPairBudget) {
  // Two tokens, four experts, k = 1. Pair scores: t0 = [.9 .1 .0 .0], t1 = [.1 .6 .5 .0].
  auto r = torch::tensor({0.9f, 0.1f, 0.0f, 0.0f, 0.1f, 0.6f, 0.5f, 0.0f}).view({1, 2, 4});
  auto core = [&](double ratio, int64_t g) { return moe::des_seq_coreset(r, 1, ratio, g, 2).view({4}); };
  // ratio 0.5: 1 pair (.9) -> {e0}; ratio 1: 2 pairs (.9, .6) -> {e0, e1}; 1.5: 3 pairs -> + e2.
  EXPECT_TRUE(torch::equal(core(0.5, 1), mask_of({1, 0, 0, 0})));
  EXPECT_TRUE(torch::equal(core(1.0, 1), mask_of({1, 1, 0, 0})));
  EXPECT_TRUE(torch::equal(core(1.5, 1), mask_of({1, 1, 1, 0})));
  // The minimum size grows it by each expert's best pair (e1 .6 before e2 .5).
  EXPECT_TRUE(torch::equal(core(0.5, 2), mask_of({1, 1, 0, 0})));
  // A budget of every pair keeps every expert, zero scores included.
  EXPECT_TRUE(torch::equal(core(4.0, 1), mask_of({1, 1, 1, 1})));
  // Chunks are separate: chunk 1 gives each token its own best expert at ratio 1.
  auto per_tok = moe::des_seq_coreset(r, 1, 1.0, 1, 1);
  EXPECT_TRUE(torch::equal(per_tok.view({2, 4}), mask_of({1, 0, 0, 0, 0, 1, 0, 0}).view({2, 4})));
}

TEST(DesVote, HandWorkedThreshold) {
  // Votes: t0 -> e0 .8, e1 .4; t1 -> e1 .5, e3 .1. Sums [.8 .9 0 .1].
  auto v = torch::tensor({0.8f, 0.4f, 0.0f, 0.0f, 0.0f, 0.5f, 0.0f, 0.1f}).view({1, 2, 4});
  auto core = [&](double t, int64_t g) { return moe::des_vote_coreset(v, t, g, 2).view({4}); };
  EXPECT_TRUE(torch::equal(core(0.0, 1), mask_of({1, 1, 0, 1})));  // every voted expert, never e2
  EXPECT_TRUE(torch::equal(core(0.5, 1), mask_of({1, 1, 0, 0})));  // >= .45
  EXPECT_TRUE(torch::equal(core(1.0, 1), mask_of({0, 1, 0, 0})));  // the best only
  EXPECT_TRUE(torch::equal(core(1.0, 3), mask_of({1, 1, 0, 1})));  // grown by vote
  EXPECT_TRUE(torch::equal(core(1.0, 4), mask_of({1, 1, 1, 1})));
}

TEST(DesRouting, LimitsAreTokenRoutingAndTheKnobsAreMonotone) {
  torch::manual_seed(11);
  const int64_t B = 2, L = 40, E = 16, chunk = 16;
  auto logits = torch::randn({B * L, E});
  auto bias = torch::randn({E}) * 0.05;
  auto p = grouped_params();
  auto biased = moe::biased_scores(logits, bias, p.score);
  auto token = moe::route_token_choice(logits, bias, p);
  auto restricted = [&](const torch::Tensor& core_BCE) {
    return moe::route_token_choice(logits, bias, p, moe::coreset_per_token(core_BCE, L, chunk));
  };
  // DES-S with a budget of every pair: all experts, so exactly token routing (group limit included).
  auto all = moe::des_seq_coreset(biased.view({B, L, E}), p.k, static_cast<double>(E) / p.k, 1, chunk);
  EXPECT_TRUE(all.all().item<bool>());
  EXPECT_TRUE(torch::equal(sorted_idx(restricted(all)), sorted_idx(token)));

  // DES-V at threshold 0 keeps every expert some token picked: each token's own choice survives.
  auto idx = moe::select_topk_grouped(biased, p.k, p.n_group, p.topk_group);
  auto s = torch::sigmoid(logits);
  auto vote = torch::zeros_like(s).scatter(1, idx, s.gather(1, idx)).view({B, L, E});
  auto v0 = moe::des_vote_coreset(vote, 0.0, 1, chunk);
  EXPECT_TRUE(moe::coreset_per_token(v0, L, chunk).gather(1, idx).all().item<bool>());
  // Without a group limit restricted routing then reproduces token routing exactly.
  auto flat = p;
  flat.n_group = 1;
  flat.topk_group = 1;
  auto idx_flat = moe::select_topk_grouped(biased, p.k, 1, 1);
  auto vote_flat = torch::zeros_like(s).scatter(1, idx_flat, s.gather(1, idx_flat)).view({B, L, E});
  auto core_flat = moe::coreset_per_token(moe::des_vote_coreset(vote_flat, 0.0, 1, chunk), L, chunk);
  EXPECT_TRUE(torch::equal(sorted_idx(moe::route_token_choice(logits, bias, flat, core_flat)),
                           sorted_idx(moe::route_token_choice(logits, bias, flat))));

  // Monotone: a larger ratio / smaller threshold never drops an expert. Sizes >= the minimum,
  // and every token routes inside its chunk's coreset with gates renormalized over its k.
  torch::Tensor prev_s, prev_v;
  for (double knob : {0.1, 0.25, 0.5, 1.0, 2.0}) {
    auto cs = moe::des_seq_coreset(biased.view({B, L, E}), p.k, knob, 6, chunk);
    auto cv = moe::des_vote_coreset(vote, 1.0 / (1.0 + 4.0 * knob), 6, chunk);
    EXPECT_EQ(cs.sizes(), (std::vector<int64_t>{B, 3, E}));
    EXPECT_GE(cs.sum(-1).min().item<int64_t>(), 6);
    EXPECT_GE(cv.sum(-1).min().item<int64_t>(), 6);
    if (prev_s.defined()) {
      EXPECT_TRUE(prev_s.logical_and(cs.logical_not()).any().item<bool>() == false) << knob;
      EXPECT_TRUE(prev_v.logical_and(cv.logical_not()).any().item<bool>() == false) << knob;
    }
    prev_s = cs, prev_v = cv;
    for (const auto& core : {cs, cv}) {
      auto plan = restricted(core);
      EXPECT_TRUE(moe::coreset_per_token(core, L, chunk).gather(1, plan.idx_TK).all().item<bool>());
      auto g = torch::sigmoid(logits).gather(1, plan.idx_TK);
      EXPECT_TRUE(torch::allclose(plan.gate_TK, g / g.sum(-1, true)));
    }
  }
  // A small budget shares experts: fewer distinct experts per chunk than token routing uses.
  auto small = moe::des_seq_coreset(biased.view({B, L, E}), p.k, 0.1, 1, chunk);
  auto tok_core = moe::des_vote_coreset(vote, 0.0, 1, chunk);
  EXPECT_LT(small.sum().item<int64_t>(), tok_core.sum().item<int64_t>());
}

TEST(DesRouting, CoresetsArePerSequenceAndChunk) {
  torch::manual_seed(12);
  auto r = torch::rand({3, 48, 8});
  auto s_all = moe::des_seq_coreset(r, 2, 0.3, 2, 16);
  auto v_all = moe::des_vote_coreset(r, 0.6, 2, 16);
  for (int64_t b = 0; b < 3; ++b)
    for (int64_t c = 0; c < 3; ++c) {
      auto one = r[b].narrow(0, c * 16, 16).unsqueeze(0);
      EXPECT_TRUE(torch::equal(s_all[b][c], moe::des_seq_coreset(one, 2, 0.3, 2, 16)[0][0]));
      EXPECT_TRUE(torch::equal(v_all[b][c], moe::des_vote_coreset(one, 0.6, 2, 16)[0][0]));
    }
}

TEST(DesRouting, ValidationNamesTheFlag) {
  moe::MoeConfig cfg;
  cfg.num_experts = 8;
  moe::InferenceRouting r;
  for (auto pol : {moe::RoutingPolicy::kDesS, moe::RoutingPolicy::kDesV}) {
    r.policy = pol;
    r.des_chunk = 16;
    r.des_min_experts = 3;
    r.des_s_ratio = 0.25;
    r.des_v_threshold = 0.5;
    EXPECT_NO_THROW(r.validate(cfg));
  }
  EXPECT_EQ(moe::parse_routing_policy("des-s"), moe::RoutingPolicy::kDesS);
  EXPECT_EQ(moe::routing_policy_name(moe::RoutingPolicy::kDesV), "des-v");
  r.policy = moe::RoutingPolicy::kDesS;
  r.des_s_ratio = 0.0;
  EXPECT_THROW(r.validate(cfg), UserError);
  r.des_s_ratio = 0.5;
  r.des_min_experts = cfg.num_experts + 1;
  EXPECT_THROW(r.validate(cfg), UserError);
  r.des_min_experts = 0;
  r.policy = moe::RoutingPolicy::kDesV;
  r.des_v_threshold = 1.5;
  EXPECT_THROW(r.validate(cfg), UserError);
  r.des_v_threshold = 0.5;
  cfg.router_type = moe::RouterType::kExpertChoice;
  EXPECT_THROW(r.validate(cfg), UserError) << "DES routes token choice only";
}
