// The dMoE "learnable block experts" fine-tune pieces: a narrowed noise range, the per-masked-token
// loss, block routing inside training forwards (and evaluations), and the semi-autoregressive
// evaluation that judges it as the block decoder sees the model.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "../test_models.h"
#include "../test_util.h"
#include "ecdlm/data/shards.h"
#include "ecdlm/eval/elbo.h"
#include "ecdlm/train/diffusion.h"
#include "ecdlm/train/trainer.h"
#include "ecdlm/util/error.h"

using namespace ecdlm;

namespace {
ModelConfig tc_config() { return test::small_tc_config(50, 16); }

// `n` validation windows of 32 tokens (ids (i * a + i / b) mod 48, vocabulary 50) in a fresh shard.
data::EvalWindows val_windows(const std::string& name, int64_t n, size_t a, size_t b) {
  const auto dir = test::temp_dir(name);
  std::vector<int32_t> ids(static_cast<size_t>(n) * 32);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>((i * a + i / b) % 48);
  data::write_token_shard(dir, "val", ids, 50);
  return data::EvalWindows(data::TokenShard::open(dir, "val"), 32, 0);
}
}  // namespace

TEST(BlockFinetune, NoiseRangeIsRespected) {
  auto x0 = torch::randint(0, 48, {64, 400}, torch::kInt64);
  auto nb = noise_batch(x0, 49, 11, 0.3, 0.8);
  // Realized r = Binomial(400, t) / 400 with t in [0.3, 0.8): well inside [0.2, 0.9].
  EXPECT_GE(nb.r_B.min().item<float>(), 0.2f);
  EXPECT_LE(nb.r_B.max().item<float>(), 0.9f);
  // The default range keeps the original draws bit for bit.
  EXPECT_TRUE(torch::equal(noise_batch(x0, 49, 11).masked_BL, noise_batch(x0, 49, 11, 0.0, 1.0).masked_BL));
}

TEST(BlockFinetune, PerMaskedTokenLossIsTheMeanMaskedCrossEntropy) {
  torch::manual_seed(1);
  MoeDlm m(tc_config());
  m->eval();
  auto x0 = torch::randint(0, 48, {2, 16}, torch::kInt64);
  auto nb = noise_batch(x0, 49, 3, 0.3, 0.8);
  auto fwd = m->forward(nb.x_t_BL);
  auto dl = diffusion_loss(m, fwd.hidden_BLD, x0, nb, /*inverse_r=*/true, /*per_masked_token=*/true);
  auto rows = nb.masked_BL.reshape({-1}).nonzero().squeeze(1);
  auto ce = torch::nn::functional::cross_entropy(fwd.logits_BLV.reshape({32, -1}).index_select(0, rows),
                                                 x0.reshape({-1}).index_select(0, rows));
  EXPECT_NEAR(dl.loss.item<double>(), ce.item<double>(), 1e-5);
}

TEST(BlockFinetune, TrainingForwardsRouteInsideTheCoreset) {
  torch::manual_seed(2);
  MoeDlm m(tc_config());
  m->train();
  TrainParams p;
  p.moe_routing = "block";
  p.block_top_p = 0.5;
  p.block_min_experts = 3;
  p.block_chunk = 8;
  p.mask_ratio_min = 0.3;
  p.mask_ratio_max = 0.8;
  p.loss_norm = "masked";
  p.bf16 = false;
  auto x0 = torch::randint(0, 48, {2, 16}, torch::kInt64);
  auto out = forward_backward(m, {x0}, 0, p);
  EXPECT_TRUE(std::isfinite(out.loss));
  EXPECT_GT(out.grad_norm, 0.0);
  for (auto& blk : m->moe_blocks()) {
    const auto& plan = blk->last_plan();
    ASSERT_TRUE(plan.coreset_BCE.defined());
    EXPECT_EQ(plan.coreset_BCE.size(1), 2);  // two chunks of 8
    auto allowed = moe::coreset_per_token(plan.coreset_BCE, 16, 8);
    EXPECT_TRUE(allowed.gather(1, plan.idx_TK).all().item<bool>());
  }
  // The router still learns: gradients reach the gate through the gate weights.
  EXPECT_GT(m->moe_blocks()[0]->gate->weight.grad().abs().sum().item<double>(), 0.0);
  p.max_steps = 1;
  EXPECT_NO_THROW(p.validate());
  p.mask_ratio_min = 0.9;
  p.mask_ratio_max = 0.5;
  EXPECT_THROW(p.validate(), UserError);
  p.mask_ratio_min = 0.3;
  p.moe_routing = "topk";
  EXPECT_THROW(p.validate(), UserError);
}

TEST(BlockFinetune, SemiArEvalScoresOneBlockAsTheDecoderSees) {
  torch::manual_seed(3);
  MoeDlm m(tc_config());
  const auto windows = val_windows("semi-ar-eval", 6, 7, 5);
  EvalParams p;
  p.bf16 = false;
  p.mask_samples = 2;
  p.batch_size = 4;
  const auto uniform = evaluate_elbo(m, windows, p);
  // One block spanning the window: the same draws, so exactly the uniform ELBO.
  p.mask_mode = "semi-ar";
  p.block_length = 32;
  EXPECT_NEAR(evaluate_elbo(m, windows, p).loss, uniform.loss, 1e-9);
  p.block_length = 8;
  const auto semi = evaluate_elbo(m, windows, p);
  EXPECT_TRUE(std::isfinite(semi.loss));
  EXPECT_NE(semi.loss, uniform.loss);
  EXPECT_EQ(semi.to_json()["mask_mode"], "semi-ar");
  // Block routing with a coreset of exactly G = 3 per chunk of 8 uses at most 3 experts a block.
  p.routing.policy = moe::RoutingPolicy::kBlock;
  p.routing.block_top_p = 0.01;
  p.routing.block_min_experts = 3;
  p.routing.block_chunk = 8;
  const auto blocked = evaluate_elbo(m, windows, p);
  EXPECT_GT(blocked.unique_experts_per_block, 0.0);
  EXPECT_LE(blocked.unique_experts_per_block, 3.0 + 1e-9);
  EXPECT_GT(semi.unique_experts_per_block, 3.0);  // token routing: 16 picks over 8 experts
  p.block_length = 5;  // does not divide the window
  EXPECT_THROW(evaluate_elbo(m, windows, p), UserError);
  p.block_length = 8;
  p.mask_mode = "causal";
  EXPECT_THROW(evaluate_elbo(m, windows, p), UserError);
}

TEST(BlockFinetune, ClozeAtSeveralPositionsCountsEverySpan) {
  torch::manual_seed(4);
  MoeDlm m(tc_config());
  m->eval();
  const auto windows = val_windows("cloze-positions", 5, 11, 3);
  EvalParams p;
  p.bf16 = false;
  p.batch_size = 2;
  // One position: the mid-window span [12, 20), checked against a direct argmax.
  const auto one = evaluate_cloze(m, windows, 8, p);
  auto x0 = windows.batch(0, windows.size());
  auto x = x0.clone();
  x.narrow(1, 12, 8).fill_(m->config().mask_token_id);
  torch::NoGradGuard ng;
  auto hits_B = (m->forward(x).logits_BLV.narrow(1, 12, 8).argmax(-1) == x0.narrow(1, 12, 8)).sum(1);
  ASSERT_EQ(one.correct_per_window.size(), 5U);
  for (int64_t b = 0; b < 5; ++b) EXPECT_EQ(one.correct_per_window[size_t(b)], hits_B[b].item<int64_t>());
  EXPECT_EQ(one.tokens, 5 * 8);
  // Four positions (spans centred at 4, 12, 20, 28, clamped into the window): 4x the tokens, and
  // the accuracy is the per-window counts' total.
  const auto four = evaluate_cloze(m, windows, 8, p, 4);
  EXPECT_EQ(four.tokens, 4 * 5 * 8);
  int64_t total = 0;
  for (auto c : four.correct_per_window) {
    EXPECT_LE(c, 4 * 8);
    total += c;
  }
  EXPECT_DOUBLE_EQ(four.accuracy, static_cast<double>(total) / static_cast<double>(four.tokens));
}
