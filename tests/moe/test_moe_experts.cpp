// Stacked experts: fast path (bmm / grouped GEMM) against the per-expert reference loop, forward
// and backward; degenerate routings that must reduce to a dense MLP or a soft mixture; MoeBlock.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>
#include <vector>

#include "ecdlm/moe/experts.h"
#include "ecdlm/moe/moe_block.h"
#include "ecdlm/moe/moe_config.h"
#include "ecdlm/moe/router.h"
#include "ecdlm/moe/scaling.h"
#include "ecdlm/nn/linear.h"

namespace ecdlm::moe {
namespace {

void randomize(torch::nn::Module& m, double std) {
  torch::NoGradGuard ng;
  for (auto& p : m.parameters()) p.normal_(0.0, std);
}

::testing::AssertionResult close(const torch::Tensor& a, const torch::Tensor& b, double rtol,
                                 double atol) {
  if (!a.defined() || !b.defined())
    return ::testing::AssertionFailure() << "undefined tensor (a=" << a.defined()
                                         << ", b=" << b.defined() << ")";
  if (a.sizes() != b.sizes())
    return ::testing::AssertionFailure() << "shape " << a.sizes() << " vs " << b.sizes();
  if (torch::allclose(a.to(torch::kFloat64), b.to(torch::kFloat64), rtol, atol))
    return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << "max abs diff " << (a.to(torch::kFloat64) - b.to(torch::kFloat64)).abs().max().item<double>()
         << " (max |a| " << a.abs().max().item<double>() << ")";
}

enum class Kind { kEc, kEcPhi, kTcCapacity, kTcDropless };

struct ExCase {
  std::string name;
  Kind kind;
  int64_t B, L, D, F, E;
  int64_t K;                // TC k
  std::vector<int64_t> C;   // EC capacity per sequence
  double cf = 0.0;          // TC capacity factor
};
std::ostream& operator<<(std::ostream& os, const ExCase& c) { return os << c.name; }

class ExpertsFastPath : public ::testing::TestWithParam<ExCase> {};

RoutingPlan make_plan(const ExCase& c, const torch::Tensor& logits_TE) {
  if (c.kind == Kind::kEc || c.kind == Kind::kEcPhi) {
    ExpertChoiceParams p;
    if (c.kind == Kind::kEcPhi) p.phi = &ec_scaling_table(c.E, 2.0);
    return route_expert_choice(logits_TE.view({c.B, c.L, c.E}), torch::tensor(c.C, torch::kInt64), p);
  }
  TokenChoiceParams p;
  p.k = c.K;
  p.capacity_factor = c.kind == Kind::kTcCapacity ? c.cf : 0.0;
  return route_token_choice(logits_TE, torch::Tensor(), p);
}

TEST_P(ExpertsFastPath, ForwardAndGradientsMatchReference) {
  const auto& c = GetParam();
  torch::manual_seed(41);
  const int64_t T = c.B * c.L;
  Experts ex(c.E, c.D, c.F);
  randomize(*ex, 0.5);
  auto x = torch::randn({T, c.D}).requires_grad_(true);
  auto w = (torch::randn({c.E, c.D}) * 0.7).requires_grad_(true);
  auto R = torch::randn({T, c.D});
  std::vector<torch::Tensor> inputs = {x, w, ex->gate_proj, ex->up_proj, ex->down_proj};
  const char* names[] = {"x", "router weight", "gate_proj", "up_proj", "down_proj"};

  auto run = [&](bool reference, torch::Tensor& y) {
    auto plan = make_plan(c, router_logits(x, w));
    EXPECT_EQ(plan.expert_major, c.kind != Kind::kTcDropless);
    y = reference ? run_plan_reference(x, plan, ex) : run_plan(x, plan, ex);
    auto loss = (y * R).sum();
    auto g = torch::autograd::grad({loss}, inputs, {}, false, false, /*allow_unused=*/true);
    for (size_t i = 0; i < g.size(); ++i)
      if (!g[i].defined()) g[i] = torch::zeros_like(inputs[i]);
    return g;
  };
  torch::Tensor y_fast, y_ref;
  auto g_fast = run(false, y_fast);
  auto g_ref = run(true, y_ref);
  EXPECT_EQ(y_fast.scalar_type(), torch::kFloat32);
  EXPECT_TRUE(close(y_fast, y_ref, 1e-5, 1e-5)) << "forward";
  EXPECT_GT(y_ref.abs().max().item<float>(), 1e-2);  // not a vacuous comparison
  for (size_t i = 0; i < g_fast.size(); ++i)
    EXPECT_TRUE(close(g_fast[i], g_ref[i], 1e-4, 1e-5)) << "grad of " << names[i];
  // Router gradient flows through the gates whenever some token has > 1 expert.
  if (c.E > 1 && c.kind != Kind::kTcCapacity)
    EXPECT_GT(g_ref[1].abs().sum().item<float>(), 0.0f) << "no gradient reached the router";
}

INSTANTIATE_TEST_SUITE_P(
    ExpertsPlans, ExpertsFastPath,
    ::testing::Values(
        ExCase{"EC_B2_L8_E4_C3", Kind::kEc, 2, 8, 6, 5, 4, 0, {3, 3}},
        ExCase{"EC_variableC", Kind::kEc, 3, 10, 6, 5, 5, 0, {1, 4, 10}},
        ExCase{"EC_phi_variableC", Kind::kEcPhi, 3, 10, 6, 5, 5, 0, {2, 7, 5}},
        ExCase{"EC_C1", Kind::kEc, 2, 7, 4, 3, 3, 0, {1, 1}},
        ExCase{"EC_CeqL", Kind::kEc, 2, 5, 4, 3, 6, 0, {5, 5}},
        ExCase{"EC_E1_CeqL", Kind::kEc, 2, 6, 4, 3, 1, 0, {6, 6}},
        ExCase{"TCcap_k2_cf1", Kind::kTcCapacity, 2, 8, 6, 5, 4, 2, {}, 1.0},
        ExCase{"TCcap_k1_cf05", Kind::kTcCapacity, 2, 8, 6, 5, 4, 1, {}, 0.5},
        ExCase{"TCcap_kE_cf125", Kind::kTcCapacity, 1, 9, 6, 5, 3, 3, {}, 1.25},
        ExCase{"TCdropless_k2", Kind::kTcDropless, 2, 8, 6, 5, 4, 2, {}},
        ExCase{"TCdropless_kE", Kind::kTcDropless, 2, 5, 6, 5, 3, 3, {}},
        ExCase{"TCdropless_E1", Kind::kTcDropless, 1, 7, 4, 3, 1, 1, {}},
        ExCase{"TCdropless_manyExperts_someEmpty", Kind::kTcDropless, 1, 3, 4, 3, 16, 1, {}}),
    [](const ::testing::TestParamInfo<ExCase>& i) { return i.param.name; });

TEST(ExpertsBasics, ForwardSlotsEqualsForwardOnePerExpert) {
  torch::manual_seed(42);
  Experts ex(3, 6, 4);
  randomize(*ex, 0.5);
  auto x_END = torch::randn({3, 5, 6});
  auto y = ex->forward_slots(x_END);
  ASSERT_EQ(y.sizes(), torch::IntArrayRef({3, 5, 6}));
  for (int64_t e = 0; e < 3; ++e) {
    auto h = torch::silu(torch::matmul(x_END[e], ex->gate_proj[e].t())) *
             torch::matmul(x_END[e], ex->up_proj[e].t());
    auto want = torch::matmul(h, ex->down_proj[e].t());
    EXPECT_TRUE(close(y[e], want, 1e-5, 1e-6)) << "e=" << e;
    EXPECT_TRUE(close(ex->forward_one(e, x_END[e]), want, 1e-5, 1e-6)) << "e=" << e;
  }
  // Stacked layout: gate/up [E, F, D], down [E, D, F].
  EXPECT_EQ(ex->gate_proj.sizes(), torch::IntArrayRef({3, 4, 6}));
  EXPECT_EQ(ex->down_proj.sizes(), torch::IntArrayRef({3, 6, 4}));
}

TEST(ExpertsBasics, DispatchAndCombineByHand) {
  torch::manual_seed(43);
  auto x = torch::randn({4, 3});
  auto tok = torch::tensor({2, 0, 2, 3}, torch::kInt64).view({2, 2});
  auto d = dispatch_slots(x, tok);
  EXPECT_TRUE(torch::equal(d[0][0], x[2]));
  EXPECT_TRUE(torch::equal(d[1][1], x[3]));
  auto y = torch::randn({2, 2, 3});
  auto gate = torch::tensor({0.5f, 1.0f, 0.25f, 0.0f}).view({2, 2});
  auto out = combine_slots(y, gate, tok, 4);
  EXPECT_TRUE(close(out[2], 0.5 * y[0][0] + 0.25 * y[1][0], 1e-6, 1e-7));
  EXPECT_TRUE(close(out[0], y[0][1], 1e-6, 1e-7));
  EXPECT_EQ(out[1].abs().sum().item<float>(), 0.0f);
  EXPECT_EQ(out[3].abs().sum().item<float>(), 0.0f);  // gate 0 slot
}

// One expert at full capacity is the dense SwiGLU MLP with the same weights.
// Inference's direct sort / gather / combine equals the torch ops it replaces, bit for bit: the
// same rows into the experts and the same additions in the same order.
TEST(ExpertsBasics, DirectTokenMajorEqualsTorchOpsBitForBit) {
  torch::NoGradGuard ng;
  for (auto dt : {torch::kFloat32, torch::kBFloat16}) {
    torch::manual_seed(47);
    const int64_t E = 8, D = 32, F = 16, T = 11, K = 3;
    Experts ex(E, D, F);
    ex->to(dt);
    auto x = torch::randn({T, D}).to(dt);
    auto idx = torch::randint(0, E, {T, K}, torch::kInt64);
    idx.index_put_({0, 1}, idx.index({0, 0}));  // a token sent twice to one expert
    auto gate = torch::rand({T, K});
    auto got = run_token_major(x, idx, gate, ex);
    auto flat = idx.reshape({-1});
    auto order = std::get<1>(torch::sort(flat, /*stable=*/true, 0, false));
    auto tok = torch::div(order, K, "floor");
    auto counts = torch::bincount(flat, {}, E);
    std::vector<int64_t> c(counts.data_ptr<int64_t>(), counts.data_ptr<int64_t>() + E);
    auto y = ex->forward_sorted(x.index_select(0, tok), c).to(torch::kFloat32);
    auto want = torch::zeros({T, D}).index_add(0, tok, y * gate.reshape({-1}).index_select(0, order).unsqueeze(-1));
    ASSERT_EQ(got.scalar_type(), torch::kFloat32);
    EXPECT_TRUE(torch::equal(got, want)) << c10::toString(dt);
  }
}

TEST(ExpertsDense, OneExpertFullCapacityEqualsDenseMlp) {
  torch::manual_seed(44);
  const int64_t B = 2, L = 6, D = 8, F = 12, T = B * L;
  Experts ex(1, D, F);
  randomize(*ex, 0.3);
  SwiGluMlp mlp(D, F);
  {
    torch::NoGradGuard ng;
    mlp->gate_proj->weight.copy_(ex->gate_proj[0]);
    mlp->up_proj->weight.copy_(ex->up_proj[0]);
    mlp->down_proj->weight.copy_(ex->down_proj[0]);
  }
  auto x = torch::randn({T, D});
  auto dense = mlp(x);
  auto logits = torch::randn({T, 1});
  // EC, C = L, phi disabled: the single expert takes every token with gate 1.
  auto ec = route_expert_choice(logits.view({B, L, 1}), torch::tensor({L, L}, torch::kInt64), {});
  EXPECT_TRUE(close(run_plan(x, ec, ex), dense, 1e-5, 1e-6)) << "EC fast";
  EXPECT_TRUE(close(run_plan_reference(x, ec, ex), dense, 1e-5, 1e-6)) << "EC reference";
  // TC, E=1, k=1, dropless (renormalized and not).
  TokenChoiceParams p;
  p.k = 1;
  auto tc = route_token_choice(logits, torch::Tensor(), p);
  EXPECT_TRUE(close(run_plan(x, tc, ex), dense, 1e-5, 1e-6)) << "TC dropless";
  p.norm_topk_prob = false;
  EXPECT_TRUE(close(run_plan(x, route_token_choice(logits, torch::Tensor(), p), ex), dense, 1e-5,
                    1e-6))
      << "TC dropless, no renorm (softmax over one expert is 1)";
  // TC, E=1, k=1, cf=1: C = T, nothing dropped.
  p.capacity_factor = 1.0;
  auto tcc = route_token_choice(logits, torch::Tensor(), p);
  EXPECT_EQ(tcc.stats.dropped_pairs.item<int64_t>(), 0);
  EXPECT_TRUE(close(run_plan(x, tcc, ex), dense, 1e-5, 1e-6)) << "TC capacity";
}

// EC with C = L: every expert takes every token, gates = softmax over all E logits.
TEST(ExpertsDense, ExpertChoiceFullCapacityIsSoftMixture) {
  torch::manual_seed(45);
  const int64_t B = 2, L = 5, D = 6, F = 7, E = 4, T = B * L;
  Experts ex(E, D, F);
  randomize(*ex, 0.4);
  auto x = torch::randn({T, D});
  auto logits = torch::randn({T, E}) * 1.5;
  auto plan = route_expert_choice(logits.view({B, L, E}), torch::tensor({L, L}, torch::kInt64), {});
  EXPECT_EQ(plan.stats.zero_expert_tokens.item<int64_t>(), 0);
  auto probs = torch::softmax(logits, -1);
  auto want = torch::zeros({T, D});
  for (int64_t e = 0; e < E; ++e) want += probs.index({torch::indexing::Slice(), e}).unsqueeze(1) * ex->forward_one(e, x);
  EXPECT_TRUE(close(run_plan(x, plan, ex), want, 1e-5, 1e-6));
  EXPECT_TRUE(close(run_plan_reference(x, plan, ex), want, 1e-5, 1e-6));
  // TC with k = E renormalized is the same mixture.
  TokenChoiceParams p;
  p.k = E;
  EXPECT_TRUE(close(run_plan(x, route_token_choice(logits, torch::Tensor(), p), ex), want, 1e-5, 1e-6));
}

// ---------------------------------------------------------------------------------------------
// MoeBlock

MoeConfig block_config(RouterType rt) {
  MoeConfig c;
  c.hidden_size = 16;
  c.num_experts = 4;
  c.num_experts_per_tok = 2;
  c.moe_intermediate_size = 8;
  c.shared_expert_intermediate_size = 16;
  c.router_type = rt;
  c.z_loss_coeff = 1e-3;
  return c;
}

TEST(MoeBlock, ForwardIsRoutedPlusSharedAndReferenceMatches) {
  for (auto rt : {RouterType::kExpertChoice, RouterType::kTokenChoice}) {
    torch::manual_seed(46);
    MoeBlock blk(block_config(rt));
    randomize(*blk, 0.3);
    blk->eval();
    const int64_t B = 2, L = 8, D = 16;
    auto x = torch::randn({B, L, D});
    MoeForwardArgs args;
    args.capacity_B = torch::tensor({3, 5}, torch::kInt64);
    auto y = blk->forward(x, args);
    ASSERT_EQ(y.sizes(), x.sizes());
    auto plan = blk->route(x, args);
    auto want = run_plan(x.view({B * L, D}), plan, blk->experts).view({B, L, D}) +
                blk->shared_experts(x);
    const char* name = rt == RouterType::kExpertChoice ? "EC" : "TC";
    EXPECT_TRUE(close(y, want, 1e-5, 1e-6)) << name;
    args.reference = true;
    EXPECT_TRUE(close(blk->forward(x, args), y, 1e-5, 1e-6)) << name;
    EXPECT_FALSE(blk->last_aux_loss().defined()) << "eval forward computes no loss";
    blk->train();
    blk->forward(x, args);
    ASSERT_TRUE(blk->last_aux_loss().defined());
    auto logits = router_logits(x.view({B * L, D}), blk->gate->weight);
    EXPECT_NEAR(blk->last_aux_loss().item<double>(), z_loss(logits, 1e-3).item<double>(), 1e-9);
  }
}

TEST(MoeBlock, ExpertChoiceNeedsCapacityAndUsesPhi) {
  torch::manual_seed(47);
  auto cfg = block_config(RouterType::kExpertChoice);
  cfg.enable_scaling_factor = true;
  MoeBlock blk(cfg);
  auto x = torch::randn({1, 8, 16});
  EXPECT_THROW(blk->route(x, {}), std::invalid_argument);
  MoeForwardArgs args;
  args.capacity_B = torch::tensor({8}, torch::kInt64);  // C = L: every token picked by all 4 experts
  auto plan = blk->route(x, args);
  const float phi4 = ec_scaling_table(4, 16.0 / 8.0)[4];
  auto sum_T = torch::zeros({8}).index_add(0, plan.token_EN.reshape({-1}), plan.gate_EN.reshape({-1}));
  EXPECT_TRUE(close(sum_T, torch::full({8}, phi4), 1e-5, 1e-6));
  cfg.enable_scaling_factor = false;
  MoeBlock blk2(cfg);
  {
    torch::NoGradGuard ng;
    blk2->gate->weight.copy_(blk->gate->weight);
  }
  auto plan2 = blk2->route(x, args);
  auto sum2 = torch::zeros({8}).index_add(0, plan2.token_EN.reshape({-1}), plan2.gate_EN.reshape({-1}));
  EXPECT_TRUE(close(sum2, torch::ones({8}), 1e-5, 1e-6));
}

TEST(MoeBlock, LossFreeBiasUpdateFromTrainingLoadsOnly) {
  torch::manual_seed(48);
  auto cfg = block_config(RouterType::kTokenChoice);
  cfg.enable_expert_bias = true;
  MoeBlock blk(cfg);
  ASSERT_TRUE(blk->gate->expert_bias.defined());
  randomize(*blk, 0.5);
  auto x = torch::randn({2, 8, 16});
  blk->eval();
  blk->forward(x, {});
  blk->update_expert_bias(0.01);
  EXPECT_EQ(blk->gate->expert_bias.abs().sum().item<float>(), 0.0f) << "eval forward changed load";
  blk->train();
  auto load = blk->route(x, {}).load_E.to(torch::kFloat32);
  blk->forward(x, {});
  blk->forward(x, {});
  blk->update_expert_bias(0.01);
  auto want = 0.01 * torch::sign(2 * load.mean() - 2 * load);
  EXPECT_TRUE(close(blk->gate->expert_bias, want, 0, 1e-7));
  EXPECT_GT(want.abs().sum().item<float>(), 0.0f);
  // Accumulator reset: a second update without forwards is a no-op.
  auto before = blk->gate->expert_bias.clone();
  blk->update_expert_bias(0.01);
  EXPECT_TRUE(torch::equal(blk->gate->expert_bias, before));
}

}  // namespace
}  // namespace ecdlm::moe
