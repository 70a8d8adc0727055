// Retrofit: TC checkpoint -> EC router, same weights; save/load round trip keeps the logits.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "../test_models.h"
#include "../test_util.h"
#include "ecdlm/model/checkpoint.h"
#include "ecdlm/train/retrofit.h"
#include "ecdlm/util/error.h"

using namespace ecdlm;

namespace {

ModelConfig tc_config() {
  ModelConfig c = test::small_tc_config(48, 32);
  c.moe_aux_loss_coeff = 0.01;
  return c;
}

TEST(Retrofit, RoundTripKeepsLogitsAndWeights) {
  torch::manual_seed(5);
  MoeDlm tc(tc_config());
  auto tc_dir = test::temp_dir("retrofit-tc");
  save_model_dir(tc, tc_dir);
  RetrofitParams rp;
  rp.schedule = "linear-reverse";
  rp.k_min = 1;
  rp.k_max = 3;
  auto ec_cfg = retrofit_config(tc_config(), rp);
  EXPECT_EQ(ec_cfg.router_type, RouterType::kExpertChoice);
  EXPECT_EQ(ec_cfg.moe_aux_loss_coeff, 0.0);
  auto ec = load_model(tc_dir, &ec_cfg);
  // Same tensors, only the routing policy differs.
  auto a = export_tensors(tc), b = export_tensors(ec);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(torch::equal(a[i].second, b[i].second)) << a[i].first;
  auto ec_dir = test::temp_dir("retrofit-ec");
  save_model_dir(ec, ec_dir);
  auto ec2 = load_model(ec_dir);
  EXPECT_EQ(ec2->config().router_type, RouterType::kExpertChoice);
  EXPECT_EQ(ec2->config().moe_capacity_schedule, "linear-reverse");
  ec->eval();
  ec2->eval();
  torch::NoGradGuard ng;
  auto ids = torch::randint(0, 47, {2, 16}, torch::kInt64);
  ids.index_put_({0, torch::indexing::Slice(0, 8)}, 47);
  auto l1 = ec->forward(ids).logits_BLV, l2 = ec2->forward(ids).logits_BLV;
  EXPECT_TRUE(torch::equal(l1, l2));
  // And the EC routing really differs from TC routing on the same weights.
  auto l_tc = tc->forward(ids).logits_BLV;
  EXPECT_FALSE(torch::allclose(l1, l_tc));
}

TEST(Retrofit, TrainableSelection) {
  MoeDlm m(tc_config());
  const int64_t all = m->num_parameters();
  EXPECT_EQ(set_trainable(m, "all"), all);
  const int64_t router = set_trainable(m, "router");
  EXPECT_EQ(router, 2 * 8 * 32);  // two MoE layers, gate [E, D]
  const int64_t rx = set_trainable(m, "router+experts");
  EXPECT_EQ(rx, router + 2 * 3 * 8 * 16 * 32);
  EXPECT_THROW(set_trainable(m, "bogus"), UserError);
  auto ec = tc_config();
  ec.router_type = RouterType::kExpertChoice;
  EXPECT_THROW(retrofit_config(ec, {}), UserError);
}

}  // namespace
