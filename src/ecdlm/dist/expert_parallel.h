// Expert parallelism for one MoE layer: each of the EP ranks holds E / EP of its experts; the
// router, the shared expert (and everything outside the layer) stay data parallel. Tokens go to
// the rank that owns their expert with all_to_all and come back the same way; both exchanges are
// autograd functions (backward is the reverse exchange), so the experts' gradients land on their
// owner and the inputs' gradients on the rank the tokens came from.
//
// Split sizes:
//  - expert-major plans (expert choice, token choice with capacity): every expert has exactly N
//    slots (EC: B * C; TC: its capacity), so rank a sends E/EP * N rows to every rank: the sizes
//    are known before routing and nothing is exchanged but the activations.
//  - token-major plans (dropless token choice): the per-expert counts go first (one small
//    all_to_all of E integers), then the variable-size exchange.
//
// Payload dtype. Under bf16 autocast (train --train-bf16, the default) the experts' GEMMs (bmm /
// linear, autocast ops) round their f32 input rows to bf16 as their first step, so the dispatch
// casts the gathered rows to bf16 just before sending (after the gather, so a token's gradient
// from several experts is still summed in f32 by the gather's backward) and the experts get the
// very rows autocast would have made: the forward is bit for bit the f32-payload forward. Backward
// sends the gradient of those bf16 rows in bf16; the one difference from f32 payloads is that the
// gate and up GEMMs' two bf16 input gradients are summed in bf16 (one rounding, 2^-9 relative)
// instead of in f32. The return already travels in bf16 (the down GEMM's output under autocast).
// In fp32 training (no autocast) everything stays f32, so fp32 runs equal one process exactly.
#pragma once
#include <torch/torch.h>

#include <vector>

#include "ecdlm/dist/process_group.h"
#include "ecdlm/moe/expert_exchange.h"
#include "ecdlm/moe/experts.h"
#include "ecdlm/moe/moe_block.h"

namespace ecdlm::dist {

// Autograd all_to_all over every rank of `group`: rows x_ND[sum(send[:r]) : +send[r]] go to rank
// r; returns the rows received, grouped by source rank (recv[r] rows from rank r). PeerError on a
// failed exchange.
torch::Tensor all_to_all_rows(ProcessGroup& group, const torch::Tensor& x_ND, const std::vector<int64_t>& send,
                              const std::vector<int64_t>& recv);

struct ExpertParallelStats {
  int64_t bytes_sent = 0;      // activations sent by this rank to other ranks (forward and backward)
  int64_t count_exchanges = 0; // size exchanges (0 for expert-major plans)
  double seconds = 0.0;        // in all_to_all (forward and backward)
};

// Autograd all_to_all as above that also adds its bytes and seconds (both directions) to *stats.
torch::Tensor all_to_all_rows(ProcessGroup& group, const torch::Tensor& x_ND, const std::vector<int64_t>& send,
                              const std::vector<int64_t>& recv, ExpertParallelStats* stats);

// Also a moe::ExpertExchange: registered in every MoE layer of a model whose `experts` hold this
// rank's shard (train --dist-ep), the layer runs its plans through it.
class ExpertParallelMoe : public moe::ExpertExchange {
 public:
  // EP over every rank of `group` (size EP). `num_experts` E must divide by EP (UserError).
  ExpertParallelMoe(ProcessGroup& group, int64_t num_experts);
  int64_t local_experts() const { return local_; }
  int64_t first_expert() const { return group_.rank() * local_; }

  // The MoE layer forward of `block` (router, shared expert: this rank's copy) with the routed
  // experts of `local` (experts [first_expert(), +local_experts()) of the layer) on this rank's
  // tokens x_BLD [B, L, D] -> [B, L, D]. `slots_per_expert`: for expert-major plans, the slot count
  // N that every rank uses (a plan with fewer slots is padded with empty ones; EC with a capacity
  // schedule passes B * the largest capacity it can give); 0: the plan's own N, which must then be
  // the same on every rank (same B and capacity).
  torch::Tensor forward(moe::MoeBlock& block, moe::Experts& local, const torch::Tensor& x_BLD,
                        const moe::MoeForwardArgs& args, int64_t slots_per_expert = 0);
  // The statistics since the last forward() / take_stats() (backward exchanges included).
  const ExpertParallelStats& last_stats() const { return stats_; }
  ExpertParallelStats take_stats() { auto s = stats_; stats_ = {}; return s; }

  // moe::ExpertExchange: the plan's routed experts on the EP ranks; x_TD [T, D] -> f32 [T, D].
  // Expert-choice plans are padded to B * the largest capacity the schedule can give (below), so
  // every rank's split sizes are fixed whatever its mask ratios; TC with capacity has C(T) slots.
  torch::Tensor run(const torch::Tensor& x_TD, const moe::RoutingPlan& plan, moe::Experts& local) override;
  // Expert choice: the schedule's largest k (k_max, or k when static); capacity C <= floor(L k / E).
  void set_capacity_k_max(double k_max) { k_max_ = k_max; }
  // true: dispatch the rows in their own dtype (f32) even under bf16 autocast (the behaviour
  // before bf16 payloads; for comparisons). Every rank of the group must agree.
  void set_f32_payload(bool on) { f32_payload_ = on; }

 private:
  torch::Tensor run_expert_major(const torch::Tensor& x_TD, const moe::RoutingPlan& plan, moe::Experts& local,
                                 int64_t slots_per_expert);
  torch::Tensor run_token_major(const torch::Tensor& x_TD, const moe::RoutingPlan& plan, moe::Experts& local);

  // The dispatched rows as they travel: bf16 under bf16 autocast (see the top), else unchanged.
  torch::Tensor payload(const torch::Tensor& x_ND) const;

  ProcessGroup& group_;
  int64_t num_experts_, local_;
  double k_max_ = 0.0;
  bool f32_payload_ = false;
  ExpertParallelStats stats_;
};

// Copies experts [first, first + local->num_experts()) of `full` into `local` (the shard a rank
// holds when it loads a single-process checkpoint).
void copy_expert_shard(moe::Experts& full, moe::Experts& local, int64_t first);

}  // namespace ecdlm::dist
