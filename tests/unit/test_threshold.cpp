// Hand-worked cases for the threshold decoders' commit rules, the dMoE coreset vote, the
// unique-expert count, and seeded reproducibility of sampling.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "../test_util.h"
#include "ecdlm/generate/threshold.h"
#include "ecdlm/model/checkpoint.h"
#include "ecdlm/util/error.h"

using namespace ecdlm;
using gen::ThresholdRule;

namespace {
const double kInf = std::numeric_limits<double>::infinity();

std::vector<int64_t> committed(const torch::Tensor& m) {
  std::vector<int64_t> out;
  for (int64_t i = 0; i < m.size(0); ++i)
    if (m[i].item<bool>()) out.push_back(i);
  return out;
}
torch::Tensor conf(std::vector<double> v) { return torch::tensor(v, torch::kFloat64); }
}  // namespace

TEST(ThresholdCommit, Llada2TakesTheHighSetWhenItCoversTheSchedule) {
  auto c = conf({0.99, -kInf, 0.5, 0.97});
  EXPECT_EQ(committed(gen::threshold_commit(c, ThresholdRule::kLlada2, 0.95, 1, 1)), (std::vector<int64_t>{0, 3}));
  EXPECT_EQ(committed(gen::threshold_commit(c, ThresholdRule::kLlada2, 0.95, 1, 2)), (std::vector<int64_t>{0, 3}));
  // Fewer than n above the threshold: the top-n candidates by confidence (never a non-candidate).
  EXPECT_EQ(committed(gen::threshold_commit(c, ThresholdRule::kLlada2, 0.95, 1, 3)), (std::vector<int64_t>{0, 2, 3}));
  EXPECT_EQ(committed(gen::threshold_commit(c, ThresholdRule::kLlada2, 0.95, 1, 9)), (std::vector<int64_t>{0, 2, 3}));
  // Strictly above: a confidence equal to the threshold does not pass.
  EXPECT_EQ(committed(gen::threshold_commit(conf({0.95, 0.2}), ThresholdRule::kLlada2, 0.95, 1, 1)),
            (std::vector<int64_t>{0}));
  EXPECT_EQ(committed(gen::threshold_commit(conf({0.95, 0.96}), ThresholdRule::kLlada2, 0.95, 1, 1)),
            (std::vector<int64_t>{1}));
}

TEST(ThresholdCommit, FastDllmThresholdAlwaysCommitsTheTopOne) {
  EXPECT_EQ(committed(gen::threshold_commit(conf({0.3, 0.6, -kInf}), ThresholdRule::kFastThreshold, 0.9, 1, 1)),
            (std::vector<int64_t>{1}));
  EXPECT_EQ(committed(gen::threshold_commit(conf({0.9, 0.95, 0.2}), ThresholdRule::kFastThreshold, 0.9, 1, 1)),
            (std::vector<int64_t>{0, 1}));
}

TEST(ThresholdCommit, FastDllmFactorRule) {
  // t_1 = 1 - 1/3, t_2 = 1 - 1/4: c_1 = 0.5 < t_1 -> m = 1.
  EXPECT_EQ(committed(gen::threshold_commit(conf({0.9, 0.5, 0.4, 0.2}), ThresholdRule::kFastFactor, 0, 1.0, 1)),
            (std::vector<int64_t>{0}));
  // c_1 = 0.8 passes t_1, c_2 = 0.3 fails t_2 -> m = 2 = the last index -> the quirk commits 3.
  EXPECT_EQ(committed(gen::threshold_commit(conf({0.3, 0.9, 0.8}), ThresholdRule::kFastFactor, 0, 1.0, 1)),
            (std::vector<int64_t>{0, 1, 2}));
  // A larger factor lowers every threshold: t_1 = 1 - 2/3 passes 0.5, t_2 = 1 - 2/4 stops 0.4.
  EXPECT_EQ(committed(gen::threshold_commit(conf({0.9, 0.5, 0.4, 0.2, 0.1}), ThresholdRule::kFastFactor, 0, 2.0, 1)),
            (std::vector<int64_t>{0, 1}));
}

TEST(SampleRows, DrawsTheDistributionAndNeverAFilteredEntry) {
  // 4 rows of the same 5-way distribution with one filtered (zero) entry: 40000 draws per entry
  // frequency within 4 standard deviations of p, the zero never drawn, the same seed the same draws.
  const std::vector<float> p = {0.1F, 0.0F, 0.45F, 0.25F, 0.2F};
  auto probs = torch::tensor(p).repeat({4, 1});
  auto gen = at::detail::createCPUGenerator(11);
  std::vector<int64_t> counts(p.size(), 0);
  const int64_t draws = 10000;
  for (int64_t i = 0; i < draws; ++i) {
    auto t = gen::sample_rows(probs, gen);
    for (int64_t r = 0; r < 4; ++r) ++counts[static_cast<size_t>(t[r].item<int64_t>())];
  }
  const double n = 4.0 * draws;
  for (size_t v = 0; v < p.size(); ++v) {
    const double sd = std::sqrt(n * p[v] * (1 - p[v]));
    EXPECT_NEAR(static_cast<double>(counts[v]), n * p[v], 4 * sd + 1e-9) << "entry " << v;
  }
  EXPECT_EQ(counts[1], 0);
  auto g1 = at::detail::createCPUGenerator(5), g2 = at::detail::createCPUGenerator(5);
  EXPECT_TRUE(torch::equal(gen::sample_rows(probs, g1), gen::sample_rows(probs, g2)));
  // Unnormalized rows and a row with a single live entry.
  auto one = torch::tensor(std::vector<float>{0, 0, 3, 0}).view({1, 4});
  EXPECT_EQ(gen::sample_rows(one, g1)[0].item<int64_t>(), 2);
}

TEST(BlockCoreset, HandWorkedVote) {
  // Two tokens, four experts, k = 1: token 0 votes e0 with 0.9, token 1 votes e1 with 0.6.
  auto r = torch::tensor({0.9f, 0.1f, 0.0f, 0.0f, 0.1f, 0.6f, 0.2f, 0.0f}).view({1, 2, 4});
  auto core = [&](double p, int64_t g, int64_t chunk) { return moe::block_coreset(r, 1, p, g, chunk); };
  // Normalized votes [0.6, 0.4, 0, 0]: p = 0.5 keeps e0 (its mass already exceeds p).
  EXPECT_TRUE(torch::equal(core(0.5, 1, 2), torch::tensor({true, false, false, false}).view({1, 1, 4})));
  EXPECT_TRUE(torch::equal(core(0.7, 1, 2), torch::tensor({true, true, false, false}).view({1, 1, 4})));
  // Minimum size G = 3: the top-3, zero-vote ties by lower id.
  EXPECT_TRUE(torch::equal(core(0.5, 3, 2), torch::tensor({true, true, true, false}).view({1, 1, 4})));
  // Chunks of one token vote alone; a short last chunk votes with what it has.
  auto per_tok = core(0.5, 1, 1);
  EXPECT_EQ(per_tok.size(1), 2);
  EXPECT_TRUE(per_tok[0][1][1].item<bool>());
  EXPECT_EQ(moe::block_coreset(r, 1, 0.5, 1, 3).size(1), 1);
}

TEST(BlockCoreset, RestrictedRoutingStaysInsideTheCoreset) {
  torch::manual_seed(3);
  auto logits = torch::randn({64, 16});
  auto bias = torch::randn({16}) * 0.05;
  auto biased = moe::biased_scores(logits, bias, moe::ScoreFn::kSigmoid);
  auto core_BCE = moe::block_coreset(biased.view({2, 32, 16}), 4, 0.6, 8, 32);
  auto allowed = moe::coreset_per_token(core_BCE, 32, 32);
  moe::TokenChoiceParams p;
  p.k = 4;
  p.score = moe::ScoreFn::kSigmoid;
  p.n_group = 4;
  p.topk_group = 2;
  auto plan = moe::route_token_choice(logits, bias, p, allowed);
  EXPECT_TRUE(allowed.gather(1, plan.idx_TK).all().item<bool>());
  EXPECT_GE(core_BCE.sum(-1).min().item<int64_t>(), 8);
  // Gates are the unbiased scores renormalized over the chosen experts.
  auto s = torch::sigmoid(logits).gather(1, plan.idx_TK);
  EXPECT_TRUE(torch::allclose(plan.gate_TK, s / s.sum(-1, true)));
}

TEST(UniqueExperts, TokenMajorWindow) {
  moe::RoutingPlan plan;
  plan.expert_major = false;
  plan.idx_TK = torch::tensor({0, 1, 1, 2, 3, 3}, torch::kInt64).view({3, 2});
  plan.gate_TK = torch::tensor({0.5f, 0.5f, 0.5f, 0.5f, 1.0f, 0.0f}).view({3, 2});
  EXPECT_DOUBLE_EQ(moe::unique_experts(plan, 1, 3, 0, 3), 4.0);
  EXPECT_DOUBLE_EQ(moe::unique_experts(plan, 1, 3, 1, 2), 3.0);  // experts 1, 2, 3
  EXPECT_DOUBLE_EQ(moe::unique_experts(plan, 1, 3, 0, 1), 2.0);
}

TEST(ThresholdGenerate, SeededSamplingIsReproducibleAndBadParamsAreRefused) {
  if (!test::has_golden("tiny")) GTEST_SKIP();
  auto model = load_model(test::golden_dir("tiny"));
  gen::ThresholdParams p;
  p.gen_length = 24;
  p.block_length = 8;
  p.steps = 4;
  p.temperature = 1.0;
  p.mask_id = 299;
  p.eos_id = -2;
  p.seed = 5;
  std::vector<int64_t> prompt = {3, 17, 42};
  auto a = gen::threshold_generate(model, prompt, p);
  auto b = gen::threshold_generate(model, prompt, p);
  EXPECT_EQ(a.tokens, b.tokens);
  EXPECT_EQ(a.tokens.size(), 24u);
  p.seed = 6;
  EXPECT_NE(gen::threshold_generate(model, prompt, p).tokens, a.tokens);
  p.top_p = 0.0;
  EXPECT_THROW(gen::threshold_generate(model, prompt, p), UserError);
  p.top_p = 1.0;
  p.routing.policy = moe::RoutingPolicy::kBlock;
  p.routing.block_min_experts = 17;  // tiny has 16 experts
  EXPECT_THROW(gen::threshold_generate(model, prompt, p), UserError);
}

// Chat stop ids (<|role_end|>, pad) end the output exactly as EOS does, early stop included.
TEST(ThresholdGenerate, StopIdsEndTheOutputLikeEos) {
  if (!test::has_golden("tiny")) GTEST_SKIP();
  auto model = load_model(test::golden_dir("tiny"));
  gen::ThresholdParams p;
  p.gen_length = 24;
  p.block_length = 8;
  p.steps = 8;
  p.mask_id = 299;
  p.eos_id = -2;
  const std::vector<int64_t> prompt = {3, 17, 42};
  const auto full = gen::threshold_generate(model, prompt, p).tokens;
  ASSERT_EQ(full.size(), 24u);
  // A stand-in stop id: the first token that shows up for the first time at position >= 2.
  size_t k = 2;
  while (k < full.size() && std::find(full.begin(), full.begin() + static_cast<long>(k), full[k]) != full.begin() + static_cast<long>(k))
    ++k;
  ASSERT_LT(k, full.size());
  const std::vector<int64_t> want(full.begin(), full.begin() + static_cast<long>(k) + 1);
  p.stop_ids = {full[k]};
  EXPECT_EQ(gen::threshold_generate(model, prompt, p).tokens, full);  // eos_id -2 ignores every stop
  p.eos_id = 298;
  ASSERT_EQ(std::find(want.begin(), want.end(), 298), want.end());
  EXPECT_EQ(gen::threshold_generate(model, prompt, p).tokens, want);
  p.eos_early_stop = true;  // may or may not fire mid-block (a position before the stop can still be masked)
  EXPECT_EQ(gen::threshold_generate(model, prompt, p).tokens, want);
  p.stop_ids = {300};
  EXPECT_THROW(gen::threshold_generate(model, prompt, p), UserError);
}
