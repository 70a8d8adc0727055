// Routers: expert choice (ec-dlm.md §2) and token choice (§4), checked against brute force and
// hand-computed cases.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <set>
#include <string>
#include <vector>

#include "ecdlm/moe/experts.h"
#include "ecdlm/moe/router.h"
#include "ecdlm/moe/router_infer.h"
#include "ecdlm/moe/scaling.h"

namespace ecdlm::moe {
namespace {

namespace idx = torch::indexing;

std::vector<float> to_vec_f(const torch::Tensor& t) {
  auto c = t.detach().to(torch::kFloat32).contiguous().reshape({-1});
  return std::vector<float>(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
}
std::vector<int64_t> to_vec_i(const torch::Tensor& t) {
  auto c = t.detach().to(torch::kInt64).contiguous().reshape({-1});
  return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
}

// Top-C positions of v by value, descending; ties: lower position first.
std::vector<int64_t> brute_top(const std::vector<float>& v, int64_t C) {
  std::vector<int64_t> order(v.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return v[a] > v[b]; });
  order.resize(static_cast<size_t>(C));
  return order;
}

// ---------------------------------------------------------------------------------------------
// Expert choice: parametrized shape table.

struct EcCase {
  std::string name;
  int64_t B, L, E;
  std::vector<int64_t> C;  // per sequence
};

std::ostream& operator<<(std::ostream& os, const EcCase& c) { return os << c.name; }

class RouterEcShapes : public ::testing::TestWithParam<EcCase> {};

// Host view of an EC plan: per (b, e) the ordered positions of its valid slots and their gates.
struct EcHost {
  std::vector<std::vector<std::vector<int64_t>>> pos;   // [B][E][C_b]
  std::vector<std::vector<std::vector<float>>> gate;    // [B][E][C_b]
  std::vector<float> invalid_gates;                     // gates of slots j >= C_b
};

EcHost unpack_ec(const RoutingPlan& plan, int64_t B, int64_t L, int64_t E,
                 const std::vector<int64_t>& C) {
  const int64_t Cmax = *std::max_element(C.begin(), C.end());
  EXPECT_TRUE(plan.expert_major);
  EXPECT_EQ(plan.token_EN.sizes(), torch::IntArrayRef({E, B * Cmax}));
  EXPECT_EQ(plan.gate_EN.sizes(), torch::IntArrayRef({E, B * Cmax}));
  auto tok = to_vec_i(plan.token_EN);
  auto g = to_vec_f(plan.gate_EN);
  EcHost h;
  h.pos.assign(B, std::vector<std::vector<int64_t>>(E));
  h.gate.assign(B, std::vector<std::vector<float>>(E));
  for (int64_t e = 0; e < E; ++e)
    for (int64_t b = 0; b < B; ++b)
      for (int64_t j = 0; j < Cmax; ++j) {
        const int64_t s = e * B * Cmax + b * Cmax + j;
        if (j < C[b]) {
          EXPECT_GE(tok[s], b * L);
          EXPECT_LT(tok[s], (b + 1) * L);
          h.pos[b][e].push_back(tok[s] - b * L);
          h.gate[b][e].push_back(g[s]);
        } else {
          h.invalid_gates.push_back(g[s]);
        }
      }
  return h;
}

TEST_P(RouterEcShapes, EveryExpertTakesExactlyCbTopLogitTokens) {
  const auto& c = GetParam();
  torch::manual_seed(11);
  auto logits = torch::randn({c.B, c.L, c.E});
  auto plan = route_expert_choice(logits, torch::tensor(c.C, torch::kInt64), {});
  auto h = unpack_ec(plan, c.B, c.L, c.E, c.C);
  for (float g : h.invalid_gates) EXPECT_EQ(g, 0.0f);
  for (int64_t b = 0; b < c.B; ++b) {
    for (int64_t e = 0; e < c.E; ++e) {
      const auto& p = h.pos[b][e];
      ASSERT_EQ(static_cast<int64_t>(p.size()), c.C[b]);
      EXPECT_EQ(static_cast<int64_t>(std::set<int64_t>(p.begin(), p.end()).size()), c.C[b])
          << "duplicate position b=" << b << " e=" << e;
      auto col = to_vec_f(logits.index({b, idx::Slice(), e}));
      EXPECT_EQ(p, brute_top(col, c.C[b])) << "b=" << b << " e=" << e;
      for (float g : h.gate[b][e]) EXPECT_GT(g, 0.0f);
    }
  }
  // Loads: every expert takes sum_b C_b tokens.
  const int64_t sumC = std::accumulate(c.C.begin(), c.C.end(), int64_t{0});
  for (auto v : to_vec_i(plan.load_E)) EXPECT_EQ(v, sumC);
  for (auto v : to_vec_i(plan.stats.tokens_per_expert_E)) EXPECT_EQ(v, sumC);
  EXPECT_EQ(to_vec_i(plan.stats.capacity_B), c.C);
  EXPECT_EQ(plan.stats.num_tokens, c.B * c.L);
  EXPECT_EQ(plan.stats.dropped_pairs.item<int64_t>(), 0);
}

TEST_P(RouterEcShapes, GatesAreSoftmaxOverSelectingExpertsAndSumToOne) {
  const auto& c = GetParam();
  torch::manual_seed(12);
  auto logits = torch::randn({c.B, c.L, c.E});
  auto plan = route_expert_choice(logits, torch::tensor(c.C, torch::kInt64), {});
  auto h = unpack_ec(plan, c.B, c.L, c.E, c.C);
  int64_t zero_tokens = 0;
  for (int64_t b = 0; b < c.B; ++b) {
    // A_t and the gate each expert assigned.
    std::vector<std::vector<int64_t>> A(c.L);
    std::vector<std::vector<float>> G(c.L);
    for (int64_t e = 0; e < c.E; ++e)
      for (size_t j = 0; j < h.pos[b][e].size(); ++j) {
        A[h.pos[b][e][j]].push_back(e);
        G[h.pos[b][e][j]].push_back(h.gate[b][e][j]);
      }
    for (int64_t t = 0; t < c.L; ++t) {
      if (A[t].empty()) {
        ++zero_tokens;
        continue;
      }
      auto row = to_vec_f(logits.index({b, t}));
      double mx = -1e30, den = 0, sum = 0;
      for (auto e : A[t]) mx = std::max<double>(mx, row[e]);
      for (auto e : A[t]) den += std::exp(row[e] - mx);
      for (size_t i = 0; i < A[t].size(); ++i) {
        double want = std::exp(row[A[t][i]] - mx) / den;
        EXPECT_NEAR(G[t][i], want, 1e-6) << "b=" << b << " t=" << t << " e=" << A[t][i];
        sum += G[t][i];
      }
      EXPECT_NEAR(sum, 1.0, 1e-5) << "b=" << b << " t=" << t;
    }
  }
  EXPECT_EQ(plan.stats.zero_expert_tokens.item<int64_t>(), zero_tokens);
}

TEST_P(RouterEcShapes, PhiScalesGatesByNumberOfSelectingExperts) {
  const auto& c = GetParam();
  torch::manual_seed(13);
  const auto& phi = ec_scaling_table(c.E, 2.0);
  auto logits = torch::randn({c.B, c.L, c.E});
  auto cap = torch::tensor(c.C, torch::kInt64);
  auto plain = route_expert_choice(logits, cap, {});
  ExpertChoiceParams p;
  p.phi = &phi;
  auto scaled = route_expert_choice(logits, cap, p);
  EXPECT_TRUE(torch::equal(plain.token_EN, scaled.token_EN));
  const int64_t T = c.B * c.L;
  // n_t from valid slots (gate > 0 in the unscaled plan, all valid gates are > 0 there).
  auto valid = (plain.gate_EN > 0).to(torch::kInt64).reshape({-1});
  auto n_T = torch::zeros({T}, torch::kInt64).index_add(0, plain.token_EN.reshape({-1}), valid);
  auto sum_T = torch::zeros({T}).index_add(0, scaled.token_EN.reshape({-1}),
                                            scaled.gate_EN.reshape({-1}));
  auto n = to_vec_i(n_T);
  auto s = to_vec_f(sum_T);
  for (int64_t t = 0; t < T; ++t) {
    double want = n[t] == 0 ? 0.0 : static_cast<double>(phi[n[t]]);
    EXPECT_NEAR(s[t], want, 1e-5 * std::max(1.0, want)) << "t=" << t << " n=" << n[t];
  }
  // Slot-wise: scaled gate = plain gate * phi(n_token).
  auto phi_T = torch::tensor(std::vector<float>(phi.begin(), phi.end())).index_select(0, n_T);
  auto want_EN = plain.gate_EN * phi_T.index_select(0, plain.token_EN.reshape({-1}))
                                     .view(plain.gate_EN.sizes());
  EXPECT_TRUE(torch::allclose(scaled.gate_EN, want_EN, 1e-6, 1e-7));
}

TEST_P(RouterEcShapes, TokensChosenByNoExpertGetZeroRoutedOutput) {
  const auto& c = GetParam();
  torch::manual_seed(14);
  const int64_t D = 6, F = 5, T = c.B * c.L;
  Experts ex(c.E, D, F);
  {
    torch::NoGradGuard ng;
    for (auto& p : ex->parameters()) p.normal_(0.0, 0.5);
  }
  auto x = torch::randn({T, D});
  auto logits = torch::randn({c.B, c.L, c.E});
  auto plan = route_expert_choice(logits, torch::tensor(c.C, torch::kInt64), {});
  auto y = run_plan(x, plan, ex);
  auto valid = (plan.gate_EN > 0).to(torch::kInt64).reshape({-1});
  auto n = to_vec_i(torch::zeros({T}, torch::kInt64).index_add(0, plan.token_EN.reshape({-1}), valid));
  int64_t zeros = 0;
  for (int64_t t = 0; t < T; ++t) {
    auto row_abs = y[t].abs().sum().item<float>();
    if (n[t] == 0) {
      ++zeros;
      EXPECT_EQ(row_abs, 0.0f) << "token " << t << " chosen by nobody has routed output";
    } else {
      EXPECT_GT(row_abs, 0.0f) << "token " << t;
    }
  }
  EXPECT_EQ(plan.stats.zero_expert_tokens.item<int64_t>(), zeros);
}

TEST_P(RouterEcShapes, VariableCapacityEqualsRoutingEachSequenceAlone) {
  const auto& c = GetParam();
  torch::manual_seed(15);
  auto logits = torch::randn({c.B, c.L, c.E});
  auto plan = route_expert_choice(logits, torch::tensor(c.C, torch::kInt64), {});
  auto h = unpack_ec(plan, c.B, c.L, c.E, c.C);
  for (int64_t b = 0; b < c.B; ++b) {
    auto one = route_expert_choice(logits.index({idx::Slice(b, b + 1)}),
                                   torch::tensor({c.C[b]}, torch::kInt64), {});
    auto h1 = unpack_ec(one, 1, c.L, c.E, {c.C[b]});
    for (int64_t e = 0; e < c.E; ++e) {
      EXPECT_EQ(h.pos[b][e], h1.pos[0][e]) << "b=" << b << " e=" << e;
      ASSERT_EQ(h.gate[b][e].size(), h1.gate[0][e].size());
      for (size_t j = 0; j < h1.gate[0][e].size(); ++j)
        EXPECT_FLOAT_EQ(h.gate[b][e][j], h1.gate[0][e][j]);
    }
  }
}

TEST_P(RouterEcShapes, ZLossByHand) {
  const auto& c = GetParam();
  torch::manual_seed(16);
  auto logits = torch::randn({c.B, c.L, c.E}) * 3.0;
  ExpertChoiceParams p;
  p.z_loss_coeff = 1e-3;
  p.compute_losses = true;
  auto plan = route_expert_choice(logits, torch::tensor(c.C, torch::kInt64), p);
  ASSERT_TRUE(plan.aux_loss.defined());
  auto v = to_vec_f(logits);
  double acc = 0;
  for (int64_t t = 0; t < c.B * c.L; ++t) {
    double mx = -1e30, s = 0;
    for (int64_t e = 0; e < c.E; ++e) mx = std::max<double>(mx, v[t * c.E + e]);
    for (int64_t e = 0; e < c.E; ++e) s += std::exp(v[t * c.E + e] - mx);
    double lse = mx + std::log(s);
    acc += lse * lse;
  }
  double want = 1e-3 * acc / static_cast<double>(c.B * c.L);
  EXPECT_NEAR(plan.aux_loss.item<double>(), want, 1e-5 * want + 1e-9);
  p.compute_losses = false;
  EXPECT_FALSE(route_expert_choice(logits, torch::tensor(c.C, torch::kInt64), p).aux_loss.defined());
}

INSTANTIATE_TEST_SUITE_P(
    RouterShapes, RouterEcShapes,
    ::testing::Values(EcCase{"B2_L8_E4_C3", 2, 8, 4, {3, 3}},
                      EcCase{"B3_L10_E5_variableC", 3, 10, 5, {1, 4, 10}},
                      EcCase{"B1_L6_E1_CeqL", 1, 6, 1, {6}},
                      EcCase{"B2_L7_E3_C1", 2, 7, 3, {1, 1}},
                      EcCase{"B2_L5_E6_CeqL", 2, 5, 6, {5, 5}},
                      EcCase{"B4_L16_E8_mixed", 4, 16, 8, {2, 16, 1, 7}},
                      EcCase{"B1_L1_E3_single", 1, 1, 3, {1}}),
    [](const ::testing::TestParamInfo<EcCase>& i) { return i.param.name; });

// ---------------------------------------------------------------------------------------------
// Expert choice: hand cases.

TEST(RouterEc, TieBreakLowerPositionWins) {
  torch::manual_seed(21);
  // B=1, L=6, E=2. Expert 0: all equal. Expert 1: three-way tie at 3 among {1,2,3,5}.
  auto logits = torch::tensor({0.5f, 1.f, 0.5f, 3.f, 0.5f, 3.f, 0.5f, 3.f, 0.5f, 0.f, 0.5f, 3.f})
                    .view({1, 6, 2});
  for (int rep = 0; rep < 3; ++rep) {
    auto plan = route_expert_choice(logits, torch::tensor({3}, torch::kInt64), {});
    EXPECT_EQ(to_vec_i(plan.token_EN[0]), (std::vector<int64_t>{0, 1, 2}));
    EXPECT_EQ(to_vec_i(plan.token_EN[1]), (std::vector<int64_t>{1, 2, 3}));
  }
  // In a batch the same rule holds per sequence (flat rows offset by L).
  auto batch = torch::cat({logits, logits}, 0);
  auto plan = route_expert_choice(batch, torch::tensor({3, 2}, torch::kInt64), {});
  EXPECT_EQ(to_vec_i(plan.token_EN[1]), (std::vector<int64_t>{1, 2, 3, 7, 8, 9}));
  EXPECT_EQ(to_vec_f(plan.gate_EN[1])[5], 0.0f);  // slot j=2 of sequence 1 is invalid (C_1 = 2)
  // Long ties (an unstable sort would scramble these): 300 equal logits, C = 37 -> 0..36;
  // a second expert with two tie levels.
  auto big = torch::zeros({1, 300, 2});
  big.index_put_({0, idx::Slice(100, 200), 1}, 1.0f);
  auto pb = route_expert_choice(big, torch::tensor({37}, torch::kInt64), {});
  std::vector<int64_t> want0(37), want1(37);
  std::iota(want0.begin(), want0.end(), 0);
  std::iota(want1.begin(), want1.end(), 100);
  EXPECT_EQ(to_vec_i(pb.token_EN[0]), want0);
  EXPECT_EQ(to_vec_i(pb.token_EN[1]), want1);
  auto pb2 = route_expert_choice(big, torch::tensor({150}, torch::kInt64), {});
  auto t1 = to_vec_i(pb2.token_EN[1]);
  EXPECT_EQ(t1[99], 199);
  EXPECT_EQ(t1[100], 0);  // then the lower tie level, from position 0
  EXPECT_EQ(t1[149], 49);
}

TEST(RouterEc, SequenceResultsDoNotDependOnOtherSequences) {
  torch::manual_seed(22);
  const int64_t L = 12, E = 4;
  auto logits = torch::randn({3, L, E});
  auto plan = route_expert_choice(logits, torch::tensor({3, 2, 5}, torch::kInt64), {});
  auto other = logits.clone();
  other.index_put_({idx::Slice(1, 3)}, torch::randn({2, L, E}) * 5.0);
  // Different neighbours and different neighbour capacities (changes the slot layout).
  auto plan2 = route_expert_choice(other, torch::tensor({3, 9, 1}, torch::kInt64), {});
  auto h = unpack_ec(plan, 3, L, E, {3, 2, 5});
  auto h2 = unpack_ec(plan2, 3, L, E, {3, 9, 1});
  for (int64_t e = 0; e < E; ++e) {
    EXPECT_EQ(h.pos[0][e], h2.pos[0][e]);
    EXPECT_EQ(h.gate[0][e], h2.gate[0][e]);
  }
}

TEST(RouterEc, SelectsByRawLogitNotByProbability) {
  torch::manual_seed(23);
  // Token 0 has the larger logit for expert 0 (2 > 1) but the smaller softmax probability
  // (its other logit is huge). EC must still pick token 0 for expert 0 with C=1.
  auto logits = torch::tensor({2.f, 10.f, 1.f, -5.f}).view({1, 2, 2});
  auto plan = route_expert_choice(logits, torch::tensor({1}, torch::kInt64), {});
  EXPECT_EQ(plan.token_EN[0].item<int64_t>(), 0);
  EXPECT_EQ(plan.token_EN[1].item<int64_t>(), 0);
  // Token 0 chosen by both experts: gate = softmax over (2, 10).
  EXPECT_NEAR(plan.gate_EN[0].item<float>(), 1.0 / (1.0 + std::exp(8.0)), 1e-7);
  EXPECT_EQ(plan.stats.zero_expert_tokens.item<int64_t>(), 1);
}

// ---------------------------------------------------------------------------------------------
// Token choice.

// Dense [T, E] gate map of a token-major plan.
torch::Tensor dense_gates(const RoutingPlan& plan, int64_t E) {
  const auto T = plan.idx_TK.size(0);
  return torch::zeros({T, E}).scatter(1, plan.idx_TK, plan.gate_TK.detach());
}

TEST(RouterTc, SoftmaxScoresRenormalizedOverTopK) {
  torch::manual_seed(31);
  const int64_t T = 9, E = 6, K = 2;
  auto logits = torch::randn({T, E});
  TokenChoiceParams p;
  p.k = K;
  auto plan = route_token_choice(logits, torch::Tensor(), p);
  EXPECT_FALSE(plan.expert_major);
  ASSERT_EQ(plan.idx_TK.sizes(), torch::IntArrayRef({T, K}));
  auto probs = torch::softmax(logits, -1);
  auto want = torch::zeros({T, E});
  for (int64_t t = 0; t < T; ++t) {
    auto top = brute_top(to_vec_f(logits[t]), K);
    double s = 0;
    for (auto e : top) s += probs[t][e].item<double>();
    for (auto e : top) want[t][e] = probs[t][e].item<double>() / s;
  }
  EXPECT_TRUE(torch::allclose(dense_gates(plan, E), want, 1e-5, 1e-7));
  EXPECT_TRUE(torch::allclose(plan.gate_TK.sum(-1), torch::ones({T}), 1e-5, 1e-6));
  auto counts = torch::zeros({E}, torch::kInt64).index_add(
      0, plan.idx_TK.reshape({-1}), torch::ones({T * K}, torch::kInt64));
  EXPECT_TRUE(torch::equal(plan.load_E, counts));
  EXPECT_EQ(plan.stats.dropped_pairs.item<int64_t>(), 0);
  EXPECT_EQ(plan.stats.zero_expert_tokens.item<int64_t>(), 0);
}

TEST(RouterTc, SigmoidScoresWithAndWithoutRenormAndScaling) {
  torch::manual_seed(32);
  const int64_t T = 7, E = 8, K = 3;
  auto logits = torch::randn({T, E});
  auto sig = torch::sigmoid(logits);
  TokenChoiceParams p;
  p.k = K;
  p.score = ScoreFn::kSigmoid;
  p.norm_topk_prob = false;
  p.scaling = 2.5;
  auto plan = route_token_choice(logits, torch::Tensor(), p);
  p.norm_topk_prob = true;
  auto plan_n = route_token_choice(logits, torch::Tensor(), p);
  auto want = torch::zeros({T, E}), want_n = torch::zeros({T, E});
  for (int64_t t = 0; t < T; ++t) {
    auto top = brute_top(to_vec_f(logits[t]), K);
    double s = 0;
    for (auto e : top) s += sig[t][e].item<double>();
    for (auto e : top) {
      want[t][e] = 2.5 * sig[t][e].item<double>();
      want_n[t][e] = 2.5 * sig[t][e].item<double>() / s;
    }
  }
  EXPECT_TRUE(torch::allclose(dense_gates(plan, E), want, 1e-5, 1e-7));
  EXPECT_TRUE(torch::allclose(dense_gates(plan_n, E), want_n, 1e-5, 1e-7));
  EXPECT_TRUE(torch::allclose(plan_n.gate_TK.sum(-1), torch::full({T}, 2.5), 1e-5, 1e-6));
}

TEST(RouterTc, BiasChangesSelectionButNotGatesUnlessBiasInGate) {
  torch::manual_seed(33);
  auto logits = torch::tensor({{2.f, 1.f, 0.f, -1.f}});
  auto bias = torch::tensor({0.f, 0.f, 0.f, 10.f});
  auto pr = torch::softmax(logits, -1)[0];
  const double p0 = pr[0].item<double>(), p3 = pr[3].item<double>();
  TokenChoiceParams p;
  p.k = 2;
  // Without bias: experts {0, 1}.
  auto plain = route_token_choice(logits, torch::Tensor(), p);
  EXPECT_EQ(std::set<int64_t>({plain.idx_TK[0][0].item<int64_t>(), plain.idx_TK[0][1].item<int64_t>()}),
            (std::set<int64_t>{0, 1}));
  // With bias: experts {3, 0}; gates are the unbiased scores, renormalized.
  auto plan = route_token_choice(logits, bias, p);
  auto g = dense_gates(plan, 4)[0];
  EXPECT_NEAR(g[3].item<double>(), p3 / (p0 + p3), 1e-6);
  EXPECT_NEAR(g[0].item<double>(), p0 / (p0 + p3), 1e-6);
  EXPECT_EQ(g[1].item<float>(), 0.0f);
  EXPECT_EQ(to_vec_i(plan.load_E), (std::vector<int64_t>{1, 0, 0, 1}));
  // Not renormalized: raw unbiased probabilities.
  p.norm_topk_prob = false;
  auto raw = dense_gates(route_token_choice(logits, bias, p), 4)[0];
  EXPECT_NEAR(raw[3].item<double>(), p3, 1e-7);
  EXPECT_NEAR(raw[0].item<double>(), p0, 1e-7);
  // bias_in_gate (LLaDA-MoE): the biased scores are the weights.
  p.bias_in_gate = true;
  auto biased = dense_gates(route_token_choice(logits, bias, p), 4)[0];
  EXPECT_NEAR(biased[3].item<double>(), p3 + 10.0, 1e-5);
  EXPECT_NEAR(biased[0].item<double>(), p0, 1e-7);
}

TEST(RouterTc, GroupLimitedTopK) {
  torch::manual_seed(34);
  // E=8 in 4 groups of 2. Group scores (sum of top-2): g0=.95, g1=1.22, g2=.99, g3=.2.
  // topk_group=2 keeps groups 1 and 2; plain top-2 would take expert 0 from dropped group 0.
  std::vector<float> s = {0.95f, 0.0f, 0.62f, 0.6f, 0.5f, 0.49f, 0.1f, 0.1f};
  auto s_TE = torch::tensor(s).view({1, 8});
  auto as_set = [](const torch::Tensor& t) {
    auto v = to_vec_i(t);
    return std::set<int64_t>(v.begin(), v.end());
  };
  EXPECT_EQ(as_set(select_topk_grouped(s_TE, 2, 1, 1)), (std::set<int64_t>{0, 2}));
  EXPECT_EQ(as_set(select_topk_grouped(s_TE, 2, 4, 2)), (std::set<int64_t>{2, 3}));
  EXPECT_EQ(as_set(select_topk_grouped(s_TE, 3, 4, 2)), (std::set<int64_t>{2, 3, 4}));
  EXPECT_EQ(as_set(select_topk_grouped(s_TE, 4, 4, 2)), (std::set<int64_t>{2, 3, 4, 5}));
  // topk_group == n_group: no restriction.
  EXPECT_EQ(as_set(select_topk_grouped(s_TE, 2, 4, 4)), (std::set<int64_t>{0, 2}));
  // allowed mask (block coreset): forbidding expert 3 makes group 1 score -inf (top-2 sum), so
  // groups 2 and 0 are kept.
  auto allowed = torch::ones({1, 8}, torch::kBool);
  allowed[0][3] = false;
  EXPECT_EQ(as_set(select_topk_grouped(s_TE, 2, 4, 2, allowed)), (std::set<int64_t>{0, 4}));

  // Through route_token_choice: sigmoid(0) = 0.5 everywhere, bias = s - 0.5 makes biased = s.
  TokenChoiceParams p;
  p.k = 2;
  p.score = ScoreFn::kSigmoid;
  p.n_group = 4;
  p.topk_group = 2;
  auto plan = route_token_choice(torch::zeros({1, 8}), s_TE[0] - 0.5, p);
  EXPECT_EQ(as_set(plan.idx_TK), (std::set<int64_t>{2, 3}));
  EXPECT_TRUE(torch::allclose(plan.gate_TK, torch::full({1, 2}, 0.5)));
  // Several tokens, each group decision per token.
  auto s2 = torch::stack({s_TE[0], s_TE[0].flip(0)});
  auto idx2 = select_topk_grouped(s2, 2, 4, 2);
  EXPECT_EQ(as_set(idx2[1]), (std::set<int64_t>{4, 5}));  // flipped: groups {3,2}->{4,5} experts
}

TEST(RouterTc, CapacityFactorDropsLowestGatePairsHandCase) {
  torch::manual_seed(35);
  // T=6, E=2, k=1, cf=1 -> C = ceil(6*1/2*1) = 3. Tokens 0..4 choose expert 0, token 5 expert 1.
  // Gates (softmax prob of the chosen expert, no renorm) rank 2 > 0 > 4 > 3 > 1 for expert 0.
  std::vector<float> a = {2.0f, 0.5f, 3.0f, 1.0f, 1.5f};
  auto logits = torch::zeros({6, 2});
  for (int t = 0; t < 5; ++t) logits[t][0] = a[t];
  logits[5][1] = 1.0f;
  TokenChoiceParams p;
  p.k = 1;
  p.norm_topk_prob = false;
  p.capacity_factor = 1.0;
  auto plan = route_token_choice(logits, torch::Tensor(), p);
  ASSERT_TRUE(plan.expert_major);
  ASSERT_EQ(plan.token_EN.sizes(), torch::IntArrayRef({2, 3}));
  EXPECT_EQ(plan.stats.dropped_pairs.item<int64_t>(), 2);
  EXPECT_EQ(plan.stats.zero_expert_tokens.item<int64_t>(), 2);
  EXPECT_EQ(to_vec_i(plan.stats.tokens_per_expert_E), (std::vector<int64_t>{3, 1}));
  EXPECT_EQ(to_vec_i(plan.load_E), (std::vector<int64_t>{5, 1}));  // pre-drop
  EXPECT_EQ(to_vec_i(plan.token_EN[0]), (std::vector<int64_t>{2, 0, 4}));
  auto sig = [](double z) { return 1.0 / (1.0 + std::exp(-z)); };
  auto g0 = to_vec_f(plan.gate_EN[0]);
  EXPECT_NEAR(g0[0], sig(3.0), 1e-6);
  EXPECT_NEAR(g0[1], sig(2.0), 1e-6);
  EXPECT_NEAR(g0[2], sig(1.5), 1e-6);
  auto g1 = to_vec_f(plan.gate_EN[1]);
  EXPECT_EQ(plan.token_EN[1][0].item<int64_t>(), 5);
  EXPECT_NEAR(g1[0], sig(1.0), 1e-6);
  EXPECT_EQ(g1[1], 0.0f);
  EXPECT_EQ(g1[2], 0.0f);
  // Routed output: tokens 1 and 3 get nothing.
  Experts ex(2, 4, 3);
  {
    torch::NoGradGuard ng;
    for (auto& w : ex->parameters()) w.normal_(0.0, 0.5);
  }
  auto x = torch::randn({6, 4});
  auto y = run_plan(x, plan, ex);
  EXPECT_EQ(y[1].abs().sum().item<float>(), 0.0f);
  EXPECT_EQ(y[3].abs().sum().item<float>(), 0.0f);
  for (int t : {0, 2, 4})
    EXPECT_TRUE(torch::allclose(y[t], sig(a[t]) * ex->forward_one(0, x[t].unsqueeze(0))[0], 1e-5,
                                1e-6));
  EXPECT_TRUE(torch::allclose(y[5], sig(1.0) * ex->forward_one(1, x[5].unsqueeze(0))[0], 1e-5, 1e-6));
}

// Capacity invariants against brute force over a shape table.
struct TcCase {
  std::string name;
  int64_t T, E, K;
  double cf;
  ScoreFn score;
};
std::ostream& operator<<(std::ostream& os, const TcCase& c) { return os << c.name; }
class RouterTcCapacity : public ::testing::TestWithParam<TcCase> {};

TEST_P(RouterTcCapacity, KeepsTopCPairsPerExpertByGate) {
  const auto& c = GetParam();
  torch::manual_seed(36);
  auto logits = torch::randn({c.T, c.E}) * 2.0;
  TokenChoiceParams p;
  p.k = c.K;
  p.score = c.score;
  p.norm_topk_prob = c.score == ScoreFn::kSigmoid;
  auto dropless = route_token_choice(logits, torch::Tensor(), p);
  auto dense = dense_gates(dropless, c.E);
  p.capacity_factor = c.cf;
  auto plan = route_token_choice(logits, torch::Tensor(), p);
  const int64_t C =
      std::min<int64_t>(c.T, static_cast<int64_t>(std::ceil(double(c.T) * c.K / c.E * c.cf)));
  ASSERT_TRUE(plan.expert_major);
  ASSERT_EQ(plan.token_EN.sizes(), torch::IntArrayRef({c.E, C}));
  auto tok = to_vec_i(plan.token_EN);
  auto g = to_vec_f(plan.gate_EN);
  int64_t kept_total = 0;
  std::vector<int64_t> kept_per_token(c.T, 0);
  for (int64_t e = 0; e < c.E; ++e) {
    std::vector<float> col(c.T, -1.0f);  // gate of (t, e) or -1 when not chosen
    int64_t chosen = 0;
    for (int64_t t = 0; t < c.T; ++t) {
      float v = dense[t][e].item<float>();
      if (v > 0) {
        col[t] = v;
        ++chosen;
      }
    }
    const int64_t keep = std::min(chosen, C);
    auto want = brute_top(col, keep);
    std::vector<int64_t> got;
    for (int64_t j = 0; j < C; ++j) {
      if (j < keep) {
        got.push_back(tok[e * C + j]);
        EXPECT_NEAR(g[e * C + j], col[tok[e * C + j]], 1e-6);
        ++kept_per_token[tok[e * C + j]];
      } else {
        EXPECT_EQ(g[e * C + j], 0.0f) << "e=" << e << " j=" << j;
      }
    }
    EXPECT_EQ(got, want) << "e=" << e;
    EXPECT_EQ(plan.stats.tokens_per_expert_E[e].item<int64_t>(), keep);
    EXPECT_EQ(plan.load_E[e].item<int64_t>(), chosen);
    kept_total += keep;
  }
  EXPECT_EQ(plan.stats.dropped_pairs.item<int64_t>(), c.T * c.K - kept_total);
  EXPECT_EQ(plan.stats.zero_expert_tokens.item<int64_t>(),
            std::count(kept_per_token.begin(), kept_per_token.end(), 0));
}

INSTANTIATE_TEST_SUITE_P(
    RouterShapes, RouterTcCapacity,
    ::testing::Values(TcCase{"T16_E4_k2_cf1", 16, 4, 2, 1.0, ScoreFn::kSoftmax},
                      TcCase{"T16_E4_k2_cf05", 16, 4, 2, 0.5, ScoreFn::kSoftmax},
                      TcCase{"T10_E8_k3_cf125_sigmoid", 10, 8, 3, 1.25, ScoreFn::kSigmoid},
                      TcCase{"T9_E3_kE_cf1", 9, 3, 3, 1.0, ScoreFn::kSoftmax},
                      TcCase{"T5_E1_k1_cf1", 5, 1, 1, 1.0, ScoreFn::kSoftmax},
                      TcCase{"T6_E4_k1_cf10_capT", 6, 4, 1, 10.0, ScoreFn::kSoftmax}),
    [](const ::testing::TestParamInfo<TcCase>& i) { return i.param.name; });

TEST(RouterTc, CapacityWithNegativeBiasedGates) {
  torch::manual_seed(37);
  // LLaDA-MoE (bias_in_gate) with loss-free bias: biased scores p + b can be negative (regression:
  // slots used to be valid only when gate >= 0, with -1 marking "not chosen").
  const int64_t T = 6, E = 4;
  auto logits = torch::randn({T, E});
  TokenChoiceParams p;
  p.k = 1;
  p.norm_topk_prob = false;
  p.bias_in_gate = true;
  for (float b : {-0.9f, -2.0f}) {
    auto bias = torch::full({E}, b);
    p.capacity_factor = 0.0;
    auto dropless = route_token_choice(logits, bias, p);
    ASSERT_LT(dropless.gate_TK.max().item<float>(), 0.0f);  // every chosen gate is negative
    // Capacity that cannot bind (C = T): nothing dropped, same per-token gates.
    p.capacity_factor = 100.0;
    auto plan = route_token_choice(logits, bias, p);
    EXPECT_EQ(plan.stats.dropped_pairs.item<int64_t>(), 0) << "bias " << b;
    EXPECT_EQ(plan.stats.zero_expert_tokens.item<int64_t>(), 0) << "bias " << b;
    auto sum_T =
        torch::zeros({T}).index_add(0, plan.token_EN.reshape({-1}), plan.gate_EN.reshape({-1}));
    EXPECT_TRUE(torch::allclose(sum_T, dropless.gate_TK.sum(-1), 1e-6, 1e-7)) << "bias " << b;
    // Binding capacity (C = ceil(6/4 * 0.5) = 1): each expert keeps its largest (least negative)
    // gate, whatever its sign; not-chosen tokens never fill a slot.
    p.capacity_factor = 0.5;
    auto cap = route_token_choice(logits, bias, p);
    ASSERT_EQ(cap.token_EN.size(1), 1);
    auto dense = torch::zeros({T, E}).scatter(1, dropless.idx_TK, dropless.gate_TK);
    auto chosen = torch::zeros({T, E}, torch::kBool).scatter(1, dropless.idx_TK, true);
    int64_t kept = 0;
    for (int64_t e = 0; e < E; ++e) {
      auto col = dense.index({idx::Slice(), e}).masked_fill(chosen.index({idx::Slice(), e}).logical_not(),
                                                          -std::numeric_limits<float>::infinity());
      if (chosen.index({idx::Slice(), e}).any().item<bool>()) {
        ++kept;
        EXPECT_EQ(cap.token_EN[e][0].item<int64_t>(), col.argmax().item<int64_t>()) << "e=" << e;
        EXPECT_EQ(cap.gate_EN[e][0].item<float>(), col.max().item<float>()) << "e=" << e;
      } else {
        EXPECT_EQ(cap.gate_EN[e][0].item<float>(), 0.0f) << "e=" << e;
      }
    }
    EXPECT_EQ(cap.stats.dropped_pairs.item<int64_t>(), T - kept) << "bias " << b;
  }
}

TEST(RouterTc, SwitchAuxLossAndZLossByHand) {
  torch::manual_seed(38);
  const int64_t T = 7, E = 4, K = 2;
  const double coeff = 0.01, zc = 1e-3;
  auto logits = torch::randn({T, E}) * 2.0;
  TokenChoiceParams p;
  p.k = K;
  p.capacity_factor = 0.5;  // drops happen; f_e must count pre-drop pairs
  p.compute_losses = true;
  p.aux_loss_coeff = coeff;
  p.z_loss_coeff = 0.0;
  auto plan = route_token_choice(logits, torch::Tensor(), p);
  ASSERT_TRUE(plan.aux_loss.defined());
  ASSERT_GT(plan.stats.dropped_pairs.item<int64_t>(), 0);
  auto v = to_vec_f(logits);
  std::vector<double> P(E, 0.0), f(E, 0.0);
  double z = 0;
  for (int64_t t = 0; t < T; ++t) {
    double mx = -1e30, s = 0;
    for (int64_t e = 0; e < E; ++e) mx = std::max<double>(mx, v[t * E + e]);
    for (int64_t e = 0; e < E; ++e) s += std::exp(v[t * E + e] - mx);
    for (int64_t e = 0; e < E; ++e) P[e] += std::exp(v[t * E + e] - mx) / s;
    double lse = mx + std::log(s);
    z += lse * lse;
    for (auto e : brute_top(std::vector<float>(v.begin() + t * E, v.begin() + (t + 1) * E), K))
      f[e] += 1;
  }
  double sum = 0;
  for (int64_t e = 0; e < E; ++e) sum += P[e] * f[e];
  const double aux = coeff * E / (double(T) * T * K) * sum;
  const double zl = zc * z / T;
  EXPECT_NEAR(plan.aux_loss.item<double>(), aux, 1e-6 * aux);
  EXPECT_NEAR(switch_aux_loss(logits, plan.load_E, K, coeff).item<double>(), aux, 1e-6 * aux);
  EXPECT_NEAR(z_loss(logits, zc).item<double>(), zl, 1e-6 * zl);
  p.z_loss_coeff = zc;
  EXPECT_NEAR(route_token_choice(logits, torch::Tensor(), p).aux_loss.item<double>(), aux + zl,
              1e-6 * (aux + zl));
  p.aux_loss_coeff = 0.0;
  EXPECT_NEAR(route_token_choice(logits, torch::Tensor(), p).aux_loss.item<double>(), zl, 1e-6 * zl);
  p.compute_losses = false;
  EXPECT_FALSE(route_token_choice(logits, torch::Tensor(), p).aux_loss.defined());
  // Gradient of the aux loss reaches the logits (through P only).
  auto lg = logits.clone().requires_grad_(true);
  p.compute_losses = true;
  p.aux_loss_coeff = coeff;
  p.z_loss_coeff = 0.0;
  route_token_choice(lg, torch::Tensor(), p).aux_loss.backward();
  ASSERT_TRUE(lg.grad().defined());
  EXPECT_GT(lg.grad().abs().sum().item<float>(), 0.0f);
}

TEST(RouterTc, RouterLogitsAreFp32Linear) {
  torch::manual_seed(39);
  auto x = torch::randn({5, 6});
  auto w = torch::randn({3, 6});
  auto l = router_logits(x, w);
  EXPECT_EQ(l.scalar_type(), torch::kFloat32);
  EXPECT_TRUE(torch::allclose(l, torch::matmul(x, w.t()), 1e-5, 1e-6));
}


// The one-pass inference router against route_token_choice: the same experts in the same order
// and the same gates, for sigmoid / softmax, grouped or not, with and without the bias, gates
// from biased scores (LLaDA-MoE), and restricted to a coreset (dMoE block routing).
TEST(RouterTcInfer, OnePassEqualsTorchRouter) {
  torch::manual_seed(41);
  const int64_t T = 37, E = 64;
  auto logits = torch::randn({T, E}) * 2.0;
  auto bias = torch::randn({E}) * 0.1;
  // A coreset of 12 experts per token (3 of them in one group, so that group has fewer than two
  // allowed experts for some tokens), and rows that allow fewer than k experts.
  auto allowed = torch::rand({T, E}) < 0.2;
  allowed.index_put_({idx::Slice(0, 3)}, false);
  allowed.index_put_({0, 5}, true);
  for (int variant = 0; variant < 6; ++variant) {
    TokenChoiceParams p;
    p.k = 6;
    p.score = variant % 2 ? ScoreFn::kSoftmax : ScoreFn::kSigmoid;
    p.n_group = variant < 4 ? 8 : 1;
    p.topk_group = variant < 4 ? 4 : 1;
    p.norm_topk_prob = variant != 2;
    p.scaling = variant == 2 ? 1.0 : 2.5;
    p.bias_in_gate = variant == 3;
    const auto b = variant == 5 ? torch::Tensor() : bias;
    for (bool restricted : {false, true}) {
      const auto a = restricted ? allowed : torch::Tensor();
      ASSERT_TRUE(route_infer_applies(logits, p));
      auto want = route_token_choice(logits, b, p, a);
      auto got = route_token_choice_infer(logits, b, p, a);
      EXPECT_FALSE(got.expert_major);
      EXPECT_EQ(to_vec_i(got.idx_TK), to_vec_i(want.idx_TK)) << "variant " << variant << " restricted " << restricted;
      EXPECT_TRUE(torch::allclose(got.gate_TK, want.gate_TK, 1e-6, 1e-7)) << "variant " << variant;
      EXPECT_EQ(to_vec_i(got.load_E), to_vec_i(want.load_E));
      EXPECT_EQ(got.stats.num_tokens, T);
    }
  }
  // Out of its scope: capacity, losses, autograd logits.
  TokenChoiceParams p;
  p.capacity_factor = 1.25;
  EXPECT_FALSE(route_infer_applies(logits, p));
  p.capacity_factor = 0;
  p.compute_losses = true;
  EXPECT_FALSE(route_infer_applies(logits, p));
  p.compute_losses = false;
  EXPECT_FALSE(route_infer_applies(logits.clone().requires_grad_(true), p));
}

TEST(RouterTcInfer, TiesGoToTheLowerIndex) {
  // Four equal scores, k = 2; two groups of equal score, topk_group = 1.
  auto logits = torch::zeros({1, 8});
  TokenChoiceParams p;
  p.k = 2;
  p.score = ScoreFn::kSigmoid;
  p.norm_topk_prob = false;
  auto plan = route_token_choice_infer(logits, torch::Tensor(), p);
  EXPECT_EQ(to_vec_i(plan.idx_TK), (std::vector<int64_t>{0, 1}));
  p.n_group = 2;
  p.topk_group = 1;
  auto bias = torch::tensor({0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 1.f});
  plan = route_token_choice_infer(logits, bias, p);
  EXPECT_EQ(to_vec_i(plan.idx_TK), (std::vector<int64_t>{7, 4})) << "group 1 wins on its bias; then 4 before 5, 6";
  EXPECT_NEAR(plan.gate_TK[0][0].item<float>(), 0.5f, 1e-7) << "gates from unbiased scores";
}

}  // namespace
}  // namespace ecdlm::moe
