// Data-parallel training over the dist/ process group. Every rank builds the same global batch
// (the sampler and the noise depend on the seed only) and trains on its own rows; bucketed
// all-reduces average the gradients during backward (dist/grad_sync.h). So the loss, gradient norm, LR schedule, clipping,
// accumulation, loss-free bias update and evaluation equal one process with the same global batch
// (up to float reordering in the sums).
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "ecdlm/dist/expert_parallel.h"
#include "ecdlm/dist/grad_sync.h"
#include "ecdlm/dist/process_group.h"
#include "ecdlm/model/config.h"
#include "ecdlm/model/moe_dlm.h"
#include "ecdlm/train/train_params.h"

namespace ecdlm {

struct DistOptions {
  double timeout_s = 300.0;  // --dist-timeout: rendezvous and every collective
  int64_t ep = 1;            // --dist-ep: expert-parallel ranks; WORLD_SIZE = DP x EP
  bool ep_f32_payload = false;  // --dist-ep-f32-payload: f32 dispatch rows under bf16 autocast too
};

// Expert parallel (--dist-ep EP > 1) borrows the data-parallel dimension, as torchtitan does: every
// rank still trains its own rows of the global batch, and rank = dp_index * EP + ep_index. The EP
// ranks of one dp_index split every MoE layer's experts (rank ep_index holds experts
// [ep_index * E/EP, +E/EP)) and exchange tokens with all_to_all; the ranks with the same ep_index
// (one per dp_index) hold the same experts and reduce their gradients.
struct DataParallel {
  std::shared_ptr<dist::ProcessGroup> group;
  std::unique_ptr<dist::GradReducer> reducer;  // made once the trainable set is known (dense params with EP)
  int64_t first = 0, count = 0;                // this rank's rows of every global micro-batch
  int64_t ep = 1, ep_index = 0, dp_index = 0;
  std::shared_ptr<dist::ProcessGroup> ep_group;       // the EP ranks of this dp_index
  std::shared_ptr<dist::ProcessGroup> replica_group;  // the ranks holding this rank's experts; null if DP = 1
  std::shared_ptr<dist::ExpertParallelMoe> exchange;  // set on every MoE layer
  std::unique_ptr<dist::GradReducer> expert_reducer;  // routed experts over replica_group
  std::vector<torch::Tensor> expert_params;           // this rank's trainable expert shards
  bool is_rank0() const { return !group || group->rank() == 0; }
  bool expert_parallel() const { return ep > 1; }
};

// With the torchrun environment set (WORLD_SIZE > 1): joins the group and checks, before any
// training, that every rank has the same model config, seed, data and training settings, that
// the global batch divides by the world size, and with --dist-ep that WORLD_SIZE and the expert
// count divide by EP (UserError on every rank otherwise; --dist-ep > 1 without the environment too).
// Then builds the EP and replica sub-groups. Without the environment: null.
std::unique_ptr<DataParallel> start_data_parallel(const ModelConfig& cfg, const TrainParams& p,
                                                  const DistOptions& opt);

// Expert parallel: replaces every MoE layer's experts by this rank's shard (rank 0's copy of the
// full model, as every rank initialized or loaded it) and sets the exchange on the layer. Returns
// the optimizer over the sharded model, carrying `opt`'s state (the experts' moments sliced).
std::unique_ptr<torch::optim::AdamW> shard_experts(DataParallel& dp, MoeDlm& model, torch::optim::AdamW& opt,
                                                   const TrainParams& p);

// Broadcasts rank 0's parameters and buffers (expert shards excepted), then hooks the reducers on
// the trainable parameters: dense ones over the world, expert shards over their replicas.
void attach_reducer(DataParallel& dp, MoeDlm& model);

// After the last micro-batch's backward: the expert shards' gradients summed over the replicas and
// divided by WORLD_SIZE (the global loss is the mean over all ranks).
void finish_expert_grads(DataParallel& dp);

// Global-norm clipping (as torch::nn::utils::clip_grad_norm_) that counts every expert shard once:
// dense gradients are identical on all ranks, the experts' squares are summed over the EP group.
double clip_grad_norm_global(DataParallel& dp, MoeDlm& model, double max_norm);

// The single-process model and optimizer that a checkpoint stores: every EP rank of dp_index 0
// sends its expert shards and their AdamW moments; rank 0 gets the full model and optimizer (the
// others, null). Ranks of other dp_index do nothing. `opt` null: weights only.
struct FullCopy {
  MoeDlm model{nullptr};
  std::unique_ptr<torch::optim::AdamW> opt;
};
FullCopy gather_full(DataParallel& dp, MoeDlm& model, torch::optim::AdamW* opt, const TrainParams& p);

// Loss-free balancing with the global loads: the per-layer loads summed over micro-batches and
// ranks, then the same update as MoeBlock::update_expert_bias (whose local accumulator is reset).
// `loads`: per MoE layer, int64 [E] summed over this rank's micro-batches (undefined: no load).
void update_expert_biases_global(DataParallel& dp, MoeDlm& model, std::vector<torch::Tensor> loads, double rate);

// A value every rank agrees on: rank 0's (wall-clock decisions: time budget, LR progress).
double agree(DataParallel* dp, double rank0_value);

}  // namespace ecdlm
