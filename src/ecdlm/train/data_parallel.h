// Data-parallel training over the dist/ process group. Every rank builds the same global batch
// (the sampler and the noise depend on the seed only) and trains on its own rows; bucketed
// all-reduces average the gradients during backward (dist/grad_sync.h). So the loss, gradient norm, LR schedule, clipping,
// accumulation, loss-free bias update and evaluation equal one process with the same global batch
// (up to float reordering in the sums).
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "ecdlm/dist/grad_sync.h"
#include "ecdlm/dist/process_group.h"
#include "ecdlm/model/config.h"
#include "ecdlm/model/moe_dlm.h"
#include "ecdlm/train/train_params.h"

namespace ecdlm {

struct DistOptions {
  double timeout_s = 300.0;  // --dist-timeout: rendezvous and every collective
};

struct DataParallel {
  std::shared_ptr<dist::ProcessGroup> group;
  std::unique_ptr<dist::GradReducer> reducer;  // made once the trainable set is known
  int64_t first = 0, count = 0;                // this rank's rows of every global micro-batch
  bool is_rank0() const { return !group || group->rank() == 0; }
};

// With the torchrun environment set (WORLD_SIZE > 1): joins the group and checks, before any
// training, that every rank has the same model config, seed, data and training settings, and that
// the global batch divides by the world size (UserError on every rank otherwise). Without it: null.
std::unique_ptr<DataParallel> start_data_parallel(const ModelConfig& cfg, const TrainParams& p,
                                                  const DistOptions& opt);

// Broadcasts rank 0's parameters and buffers, then hooks the reducer on the trainable parameters.
void attach_reducer(DataParallel& dp, MoeDlm& model);

// Loss-free balancing with the global loads: the per-layer loads summed over micro-batches and
// ranks, then the same update as MoeBlock::update_expert_bias (whose local accumulator is reset).
// `loads`: per MoE layer, int64 [E] summed over this rank's micro-batches (undefined: no load).
void update_expert_biases_global(DataParallel& dp, MoeDlm& model, std::vector<torch::Tensor> loads, double rate);

// A value every rank agrees on: rank 0's (wall-clock decisions: time budget, LR progress).
double agree(DataParallel* dp, double rank0_value);

}  // namespace ecdlm
