// Batched threshold decoding against the row-by-row reference (threshold_generate): the same
// tokens, forwards, EOS stops and per-forward expert counts, with rows of unequal prompt length
// (several groups, and different prompt tails inside one), with and without the KV cache, under
// token, block (dMoE), top-k and DES routing, greedy and sampled. Also: a block coreset never
// mixes the rows of a batched forward.
// The models run in f64 here: f32 GEMM results depend on the number of rows in the batch (BLAS
// blocking; about 1e-5 on these logits), which flips near-tie decisions of random tiny models.
// In f64 that noise is ~1e-15, so what is tested is the batching logic, decision for decision.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <map>

#include "../test_util.h"
#include "ecdlm/generate/threshold.h"
#include "ecdlm/model/checkpoint.h"

using namespace ecdlm;

namespace {

struct BatchCase {
  std::string model, routing;
  bool kv_cache;
  double temperature;
  bool eos;  // use a frequent output token as EOS (rows stop at different blocks), early stop on
};
void PrintTo(const BatchCase& c, std::ostream* os) {
  *os << c.model << " " << c.routing << " kv=" << c.kv_cache << " T=" << c.temperature << " eos=" << c.eos;
}

// Prompts of 0..33 tokens: with 16-token blocks they form three groups (0, 1 and 2 whole
// blocks), and rows of one group differ in length.
std::vector<std::vector<int64_t>> test_prompts() {
  std::vector<std::vector<int64_t>> out;
  for (int64_t len : {3, 0, 17, 20, 3, 33}) {
    std::vector<int64_t> p;
    for (int64_t i = 0; i < len; ++i) p.push_back((len * 37 + i * 11) % 290 + 1);
    out.push_back(p);
  }
  out[4][0] = 200;  // same length as row 0, other tokens
  return out;
}

gen::ThresholdParams params_for(const BatchCase& c) {
  gen::ThresholdParams p;
  p.gen_length = 40;  // not a multiple of the block: rows end in different blocks
  p.block_length = 16;
  p.steps = 8;
  p.threshold = 0.9;
  p.mask_id = 299;
  p.eos_id = -2;
  p.kv_cache = c.kv_cache;
  p.temperature = c.temperature;
  p.seed = 21;
  p.routing.policy = moe::parse_routing_policy(c.routing);
  p.routing.block_chunk = 16;
  p.routing.block_min_experts = 12;
  p.routing.des_chunk = 16;
  p.routing.topk_cap = 2;
  return p;
}

}  // namespace

class ThresholdBatch : public ::testing::TestWithParam<BatchCase> {};

TEST_P(ThresholdBatch, EqualsRowByRow) {
  const auto& c = GetParam();
  if (!test::has_golden(c.model)) GTEST_SKIP();
  auto model = load_model(test::golden_dir(c.model));
  model->to(torch::kFloat64);  // see the header: f32 GEMMs round differently with the batch's row count
  auto p = params_for(c);
  const auto prompts = test_prompts();
  if (c.eos) {
    // The most frequent generated token becomes EOS, so rows stop early and leave the batch.
    std::map<int64_t, int> freq;
    for (size_t i = 0; i < prompts.size(); ++i)
      for (auto t : gen::threshold_generate(model, prompts[i], p).tokens) ++freq[t];
    int best = 0;
    for (const auto& [t, n] : freq)
      if (n > best) best = n, p.eos_id = t;
    p.eos_early_stop = true;
  }
  auto batch = gen::threshold_generate_batch(model, prompts, p);
  ASSERT_EQ(batch.size(), prompts.size());
  size_t stopped_early = 0;
  for (size_t i = 0; i < prompts.size(); ++i) {
    auto pi = p;
    pi.seed = p.seed + i;
    auto ref = gen::threshold_generate(model, prompts[i], pi);
    const auto& got = batch[i];
    EXPECT_EQ(got.tokens, ref.tokens) << "row " << i;
    EXPECT_EQ(got.forwards, ref.forwards) << "row " << i;
    EXPECT_EQ(got.cache_forwards, ref.cache_forwards) << "row " << i;
    EXPECT_EQ(got.ride_along_appends, ref.ride_along_appends) << "row " << i;
    EXPECT_EQ(got.eos_stopped, ref.eos_stopped) << "row " << i;
    EXPECT_FALSE(got.cancelled);
    ASSERT_EQ(got.per_forward.size(), ref.per_forward.size()) << "row " << i;
    for (size_t f = 0; f < ref.per_forward.size(); ++f) {
      EXPECT_EQ(got.per_forward[f].block, ref.per_forward[f].block);
      EXPECT_EQ(got.per_forward[f].committed, ref.per_forward[f].committed);
      EXPECT_EQ(got.per_forward[f].tokens_in, ref.per_forward[f].tokens_in);
      EXPECT_NEAR(got.per_forward[f].unique_experts_per_layer, ref.per_forward[f].unique_experts_per_layer, 1e-9);
      EXPECT_NEAR(got.per_forward[f].expert_bytes, ref.per_forward[f].expert_bytes, 1e-6);
    }
    if (ref.tokens.size() < static_cast<size_t>(p.gen_length)) ++stopped_early;
  }
  if (c.eos) EXPECT_GT(stopped_early, 0u) << "the EOS case should end some rows early";
}

INSTANTIATE_TEST_SUITE_P(
    Rows, ThresholdBatch,
    ::testing::Values(BatchCase{"tiny", "token", true, 0.0, false}, BatchCase{"tiny", "token", false, 0.0, false},
                      BatchCase{"tiny", "token", true, 0.0, true}, BatchCase{"tiny", "token", true, 1.0, false},
                      BatchCase{"tiny-dmoe", "block", true, 0.0, false},
                      BatchCase{"tiny-dmoe", "block", false, 0.0, false},
                      BatchCase{"tiny-dmoe", "block", true, 0.0, true}, BatchCase{"tiny-dmoe", "topk", true, 0.0, false},
                      BatchCase{"tiny-dmoe", "des-s", true, 0.0, false},
                      BatchCase{"tiny-dmoe", "des-v", false, 1.0, false}),
    [](const auto& info) {
      const auto& c = info.param;
      std::string n = c.model + "_" + c.routing + (c.kv_cache ? "_kv" : "_nokv") + (c.temperature > 0 ? "_T1" : "_greedy") +
                      (c.eos ? "_eos" : "");
      for (auto& ch : n)
        if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
      return n;
    });

TEST(ThresholdBatch, BlockCoresetNeverMixesRows) {
  if (!test::has_golden("tiny-dmoe")) GTEST_SKIP();
  auto model = load_model(test::golden_dir("tiny-dmoe"));
  model->to(torch::kFloat64);
  model->eval();
  torch::NoGradGuard ng;
  moe::InferenceRouting r;
  r.policy = moe::RoutingPolicy::kBlock;
  r.block_min_experts = 12;
  r.block_chunk = 16;
  ForwardOptions o;
  o.block_length = 16;
  o.routing = &r;
  torch::manual_seed(4);
  auto ids = torch::randint(0, 298, {3, 32}, torch::kInt64);
  model->forward(ids, o);
  std::vector<torch::Tensor> batched;
  for (auto& blk : model->moe_blocks()) batched.push_back(blk->last_plan().coreset_BCE.clone());
  for (int64_t b = 0; b < 3; ++b) {
    model->forward(ids.narrow(0, b, 1), o);
    size_t li = 0;
    for (auto& blk : model->moe_blocks()) {
      EXPECT_TRUE(torch::equal(blk->last_plan().coreset_BCE[0], batched[li][b])) << "row " << b << " layer " << li;
      ++li;
    }
  }
  // Rows with different inputs do get different coresets (the check above is not vacuous).
  EXPECT_FALSE(torch::equal(batched[0][0], batched[0][1]) && torch::equal(batched[0][1], batched[0][2]));
}

TEST(ThresholdBatch, CancelMarksUnfinishedRows) {
  if (!test::has_golden("tiny")) GTEST_SKIP();
  auto model = load_model(test::golden_dir("tiny"));
  auto p = params_for(BatchCase{"tiny", "token", true, 0.0, false});
  int calls = 0;
  auto res = gen::threshold_generate_batch(model, test_prompts(), p, [&](const gen::StepInfo&) { return ++calls < 3; });
  EXPECT_EQ(calls, 3);
  ASSERT_EQ(res.size(), test_prompts().size());
  for (const auto& r : res) EXPECT_TRUE(r.cancelled);
}
