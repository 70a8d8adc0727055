// Expert parallelism, layer level, on 2 ranks (tests/dist/run_ranks.sh starts them with the
// torchrun environment): the EP layer's output and every gradient equal the single-process layer
// on the same tokens, for expert choice, token choice with capacity and dropless token choice.
// The reference: each rank runs the full layer on every rank's tokens (it has them all, seeded);
// the EP run keeps its own tokens and E / EP experts.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "ecdlm/dist/expert_parallel.h"
#include "ecdlm/dist/grad_sync.h"
#include "ecdlm/dist/process_group.h"
#include "ecdlm/util/compat.h"
#include "ecdlm/util/error.h"

namespace ecdlm::dist {
namespace {

ProcessGroup& group() {
  static auto g = ProcessGroup::join(DistEnv::from_environment(), 60.0);
  return *g;
}

::testing::AssertionResult close(const char* what, const torch::Tensor& a, const torch::Tensor& b) {
  if (!a.defined() || !b.defined()) return ::testing::AssertionFailure() << what << ": undefined";
  if (a.sizes() != b.sizes()) return ::testing::AssertionFailure() << what << ": shape " << a.sizes() << " vs " << b.sizes();
  if (torch::allclose(a.to(torch::kFloat64), b.to(torch::kFloat64), 1e-4, 1e-5)) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << what << ": max abs diff "
                                       << (a.to(torch::kFloat64) - b.to(torch::kFloat64)).abs().max().item<double>();
}

// bf16 autocast: both sides round the expert GEMMs to bf16, at different places (M per GEMM
// differs), so they agree to a few bf16 ulps of the largest value.
::testing::AssertionResult close_bf16(const char* what, const torch::Tensor& a, const torch::Tensor& b) {
  if (!a.defined() || !b.defined()) return ::testing::AssertionFailure() << what << ": undefined";
  if (a.sizes() != b.sizes()) return ::testing::AssertionFailure() << what << ": shape " << a.sizes() << " vs " << b.sizes();
  const auto a64 = a.to(torch::kFloat64), b64 = b.to(torch::kFloat64);
  const double diff = (a64 - b64).abs().max().item<double>(), scale = b64.abs().max().item<double>();
  if (diff <= 2e-2 * scale + 1e-6) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << what << ": max abs diff " << diff << " vs max abs " << scale;
}

enum class Kind { kEc, kTcCapacity, kTcDropless };

// One EP forward + backward of this rank's tokens (its rows of x_all / w_all) through `mine` with
// the shard `local` (fresh gradients), optionally under bf16 autocast.
struct EpRun {
  torch::Tensor y, x_grad;
  ExpertParallelStats stats;
};
EpRun run_ep(ExpertParallelMoe& ep, moe::MoeBlock& mine, moe::Experts& local, const torch::Tensor& x_all,
             const torch::Tensor& w_all, const moe::MoeForwardArgs& args, int64_t B, int64_t slots, bool bf16) {
  mine->zero_grad();
  local->zero_grad();
  const int R = group().rank();
  auto x = x_all.narrow(0, R * B, B).clone().requires_grad_(true);
  torch::Tensor y;
  {
    compat::CpuAutocast ac(bf16);
    y = ep.forward(mine, local, x, args, slots);
  }
  (y.to(torch::kFloat32) * w_all.narrow(0, R * B, B)).sum().backward();
  return {y.detach(), x.grad(), ep.last_stats()};
}

void check_equivalence(Kind kind, bool bf16 = false) {
  auto& g = group();
  ASSERT_EQ(g.size(), 2) << "run with 2 ranks (tests/dist/run_ranks.sh)";
  const int W = g.size(), R = g.rank();
  moe::MoeConfig c;
  c.hidden_size = 16;
  c.num_experts = 8;
  c.moe_intermediate_size = 12;
  c.shared_expert_intermediate_size = 8;
  c.num_experts_per_tok = 2;
  c.router_type = kind == Kind::kEc ? moe::RouterType::kExpertChoice : moe::RouterType::kTokenChoice;
  c.capacity_factor = kind == Kind::kTcCapacity ? 1.0 : 0.0;
  const int64_t B = 3, L = 8, D = c.hidden_size, C = 2;
  torch::manual_seed(11);
  moe::MoeBlock full(c), mine(c);
  {
    torch::NoGradGuard ng;
    for (auto& p : full->parameters()) p.normal_(0.0, 0.3);
    auto src = full->named_parameters();
    for (auto& kv : mine->named_parameters()) kv.value().copy_(src[kv.key()]);
  }
  auto x_all = torch::randn({W * B, L, D});
  auto w_all = torch::randn({W * B, L, D});  // loss = sum(y * w): every output element matters
  moe::MoeForwardArgs args;
  args.capacity_B = torch::full({B}, C, torch::kInt64);

  // Reference: the whole layer on each rank's tokens; parameter gradients summed over ranks.
  std::vector<torch::Tensor> y_ref, xg_ref;
  for (int r = 0; r < W; ++r) {
    auto x = x_all.narrow(0, r * B, B).clone().requires_grad_(true);
    torch::Tensor y;
    {
      compat::CpuAutocast ac(bf16);
      y = full->forward(x, args);
    }
    (y.to(torch::kFloat32) * w_all.narrow(0, r * B, B)).sum().backward();
    y_ref.push_back(y.detach());
    xg_ref.push_back(x.grad());
  }

  // Expert parallel: this rank's tokens, experts [R * E/W, +E/W).
  ExpertParallelMoe ep(g, c.num_experts);
  moe::Experts local(ep.local_experts(), D, c.moe_intermediate_size);
  copy_expert_shard(full->experts, local, ep.first_expert());
  // EC: B * C slots per expert on every rank, known in advance (no size exchange).
  const int64_t slots = kind == Kind::kEc ? B * C : 0;
  std::vector<torch::Tensor> local_grads;  // the f32-payload run's parameter gradients (bf16 case)
  EpRun f32_run;
  if (bf16) {
    // The same run with f32 rows on the wire: the forward must be bit for bit the same (the bf16
    // cast moved from after the exchange to before it), the parameter gradients too; only the
    // input gradient differs, by summing the gate/up GEMMs' bf16 input gradients in bf16.
    ep.set_f32_payload(true);
    f32_run = run_ep(ep, mine, local, x_all, w_all, args, B, slots, true);
    ep.set_f32_payload(false);
    // (mine's own full `experts` are unused by the EP forward: no gradient.)
    for (auto& p : mine->parameters()) local_grads.push_back(p.grad().defined() ? p.grad().clone() : torch::Tensor());
    for (auto& p : local->parameters()) local_grads.push_back(p.grad().clone());
  }
  const auto run = run_ep(ep, mine, local, x_all, w_all, args, B, slots, bf16);
  const auto near = bf16 ? close_bf16 : close;
  EXPECT_TRUE(near("output", run.y, y_ref[R]));
  EXPECT_TRUE(near("input gradient", run.x_grad, xg_ref[R]));
  EXPECT_EQ(run.stats.count_exchanges, kind == Kind::kTcDropless ? 1 : 0);
  // Routed experts: the owner holds the gradient from every rank's tokens.
  const int64_t first = ep.first_expert(), n = ep.local_experts();
  EXPECT_TRUE(near("w_gate grad", local->gate_proj.grad(), full->experts->gate_proj.grad().narrow(0, first, n)));
  EXPECT_TRUE(near("w_up grad", local->up_proj.grad(), full->experts->up_proj.grad().narrow(0, first, n)));
  EXPECT_TRUE(near("w_down grad", local->down_proj.grad(), full->experts->down_proj.grad().narrow(0, first, n)));
  // Router and shared expert are data parallel: their gradients summed over the ranks.
  auto ref = full->named_parameters();
  for (auto& kv : mine->named_parameters()) {
    if (kv.key().rfind("experts.", 0) == 0) continue;
    auto gsum = kv.value().grad().clone();
    g.all_reduce_sum(gsum);
    EXPECT_TRUE(near(kv.key().c_str(), gsum, ref[kv.key()].grad()));
  }
  if (!bf16) return;
  EXPECT_TRUE(torch::equal(run.y, f32_run.y)) << "bf16 payload changed the forward";
  size_t i = 0;
  const auto same = [](const torch::Tensor& a, const torch::Tensor& b) {
    return a.defined() == b.defined() && (!a.defined() || torch::equal(a, b));
  };
  for (auto& p : mine->parameters()) EXPECT_TRUE(same(p.grad(), local_grads[i++]));
  for (auto& p : local->parameters()) EXPECT_TRUE(same(p.grad(), local_grads[i++]));
  EXPECT_TRUE(close_bf16("input gradient vs f32 payload", run.x_grad, f32_run.x_grad));
  if (kind == Kind::kTcDropless) {
    EXPECT_LT(run.stats.bytes_sent, f32_run.stats.bytes_sent);
    return;
  }
  // Fixed splits: 4 exchanges of the same rows (dispatch and return, forward and backward), all
  // bf16 now; before, the dispatch pair was f32: 2 + 2 + 2 + 2 bytes against 4 + 4 + 2 + 2.
  EXPECT_EQ(run.stats.bytes_sent * 3, f32_run.stats.bytes_sent * 2);
  if (kind == Kind::kEc) EXPECT_EQ(run.stats.bytes_sent, 4 * n * (B * C) * D * 2);  // El x N rows to the other rank
}

TEST(ExpertParallel, ExpertChoiceEqualsSingleProcess) { check_equivalence(Kind::kEc); }
TEST(ExpertParallel, TokenChoiceCapacityEqualsSingleProcess) { check_equivalence(Kind::kTcCapacity); }
TEST(ExpertParallel, DroplessTokenChoiceEqualsSingleProcess) { check_equivalence(Kind::kTcDropless); }
// bf16 autocast: bf16 rows on the wire; within bf16 tolerance of the single-process layer.
TEST(ExpertParallel, Bf16PayloadExpertChoice) { check_equivalence(Kind::kEc, true); }
TEST(ExpertParallel, Bf16PayloadTokenChoiceCapacity) { check_equivalence(Kind::kTcCapacity, true); }
TEST(ExpertParallel, Bf16PayloadDroplessTokenChoice) { check_equivalence(Kind::kTcDropless, true); }

// The trainer's path: the exchange set on the layer (MoeBlock::set_expert_exchange), `experts`
// replaced by the shard; MoeBlock::forward itself then equals the single-process layer.
TEST(ExpertParallel, LayerForwardRunsThroughTheSetExchange) {
  auto& g = group();
  const int W = g.size(), R = g.rank();
  moe::MoeConfig c;
  c.hidden_size = 16;
  c.num_experts = 8;
  c.moe_intermediate_size = 12;
  c.num_experts_per_tok = 2;
  c.router_type = moe::RouterType::kExpertChoice;
  const int64_t B = 2, L = 8, D = c.hidden_size;
  torch::manual_seed(12);
  moe::MoeBlock full(c), mine(c);
  {
    torch::NoGradGuard ng;
    for (auto& p : full->parameters()) p.normal_(0.0, 0.3);
    auto src = full->named_parameters();
    for (auto& kv : mine->named_parameters()) kv.value().copy_(src[kv.key()]);
  }
  auto x_all = torch::randn({W * B, L, D});
  moe::MoeForwardArgs args;
  args.capacity_B = torch::full({B}, 2, torch::kInt64);  // = floor(L k / E): the fixed slot bound
  auto y_ref = full->forward(x_all.narrow(0, R * B, B), args);
  auto ep = std::make_shared<ExpertParallelMoe>(g, c.num_experts);
  ep->set_capacity_k_max(c.num_experts_per_tok);
  moe::Experts local(ep->local_experts(), D, c.moe_intermediate_size);
  copy_expert_shard(full->experts, local, ep->first_expert());
  mine->experts = mine->replace_module("experts", local);
  mine->set_expert_exchange(ep);
  EXPECT_THROW(mine->set_expert_exchange(ep), std::invalid_argument);  // one per layer
  EXPECT_EQ(mine->named_children().size(), full->named_children().size() + 1);
  EXPECT_EQ(mine->named_parameters().size(), full->named_parameters().size());  // state dict unchanged
  auto y = mine->forward(x_all.narrow(0, R * B, B), args);
  EXPECT_TRUE(close("layer output", y, y_ref));
  EXPECT_GT(ep->last_stats().bytes_sent, 0);
}

TEST(ExpertParallel, ExpertsMustDivide) {
  EXPECT_THROW(ExpertParallelMoe(group(), 7), ecdlm::UserError);
}

// The bucketed hook reducer averages exactly what one all_reduce of every gradient would.
TEST(GradReducer, AveragesBucketsDuringBackward) {
  auto& g = group();
  torch::manual_seed(5);
  auto lin1 = torch::nn::Linear(16, 32), lin2 = torch::nn::Linear(32, 4);
  std::vector<torch::Tensor> params;
  for (auto& p : lin1->parameters()) params.push_back(p);
  for (auto& p : lin2->parameters()) params.push_back(p);
  GradReducer reducer(g, params, /*bucket_bytes=*/1024);  // several buckets
  torch::manual_seed(100 + g.rank());                     // different data per rank
  auto x = torch::randn({8, 16});
  reducer.arm();
  lin2(torch::relu(lin1(x))).pow(2).sum().backward();
  std::vector<torch::Tensor> local;
  for (auto& p : params) local.push_back(p.grad().clone());
  reducer.finish();
  EXPECT_GT(reducer.last_stats().buckets, 1);
  g.all_reduce_sum(local);
  for (size_t i = 0; i < params.size(); ++i) EXPECT_TRUE(close("grad", params[i].grad(), local[i] / g.size()));
}

// Sub-groups (train --dist-ep builds its EP and replica groups so): a pair and a singleton from the
// same store; collectives stay among the members; a custom divisor in the reducer.
TEST(ProcessGroup, SubgroupsCollectAmongMembers) {
  auto& g = group();
  auto pair = g.subgroup("test-pair", {0, 1});
  auto solo = g.subgroup("test-solo" + std::to_string(g.rank()), {g.rank()});
  EXPECT_EQ(pair->size(), 2);
  EXPECT_EQ(pair->rank(), g.rank());
  EXPECT_EQ(solo->size(), 1);
  EXPECT_EQ(solo->rank(), 0);
  auto x = torch::full({3}, static_cast<double>(g.rank() + 1));
  auto y = x.clone();
  pair->all_reduce_sum(x);
  solo->all_reduce_sum(y);
  EXPECT_TRUE(close("pair sum", x, torch::full({3}, 3.0)));
  EXPECT_TRUE(close("solo sum", y, torch::full({3}, static_cast<double>(g.rank() + 1))));
  auto gathered = pair->all_gather(torch::full({2}, static_cast<float>(10 * g.rank())));
  EXPECT_TRUE(close("all_gather", gathered, torch::tensor({0.f, 0.f, 10.f, 10.f}).view({2, 2})));
  // The reducer's divisor: a sum over the pair divided by 4 (the world of a DP 2 x EP 2 run).
  auto w = torch::ones({2}, torch::requires_grad());
  GradReducer reducer(*pair, {w}, 1024, 4.0);
  reducer.arm();
  (w * static_cast<double>(g.rank() + 1)).sum().backward();
  reducer.finish();
  EXPECT_TRUE(close("divided grad", w.grad(), torch::full({2}, 3.0 / 4.0)));
}

}  // namespace
}  // namespace ecdlm::dist
