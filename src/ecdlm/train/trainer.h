// The training loop: noising -> forward (bf16 autocast) -> 1/r-weighted masked CE + MoE aux
// losses -> AdamW; periodic eval, atomic checkpoints (keep last N + best), bit-exact resume,
// JSONL metrics, a progress bar, and a clean stop on NaN/Inf.
#pragma once
#include <nlohmann/json.hpp>

#include <string>

#include "ecdlm/model/config.h"
#include "ecdlm/model/moe_dlm.h"
#include "ecdlm/moe/routing_stats.h"
#include "ecdlm/train/data_parallel.h"
#include "ecdlm/train/train_params.h"

namespace ecdlm {

struct TrainResult {
  int64_t steps = 0;
  int64_t tokens = 0;
  double seconds = 0.0;              // wall-clock, evals and checkpoints included
  double train_seconds = 0.0;        // optimizer steps only
  double cpu_seconds = 0.0;          // their process CPU time / intra-op threads
  double tokens_per_s = 0.0;
  double final_val_loss = 0.0;
  double final_val_ppl = 0.0;
  bool diverged = false;
  std::string last_checkpoint;  // directory of the last saved checkpoint
  std::string best_checkpoint;
  nlohmann::json to_json() const;
};

// Trains a model with config `cfg` (vocab/special ids are taken from the data's meta.json).
// `resume`: continue from the newest checkpoint in p.out_dir (bit-exact for step budgets).
// Throws UserError on bad input; returns with diverged = true on NaN/Inf.
// With the torchrun environment (WORLD_SIZE > 1) the run is data parallel (train/data_parallel.h):
// `p.batch_size` is the global batch, rank 0 writes checkpoints and metrics.
TrainResult run_training(ModelConfig cfg, const TrainParams& p, bool resume, const DistOptions& dist = {});

// AdamW with two groups: matrices decay; vectors (norms) do not.
std::unique_ptr<torch::optim::AdamW> make_optimizer(MoeDlm& model, const TrainParams& p);

struct StepOutput {
  double loss = 0.0, aux_loss = 0.0, grad_norm = 0.0;  // loss: the CE, whatever is optimized
  double distill_kl = 0.0;                              // with a teacher: T^2 * mean KL per masked token
  std::vector<torch::Tensor> load_E;  // with `dp`: per MoE layer, this rank's summed loads (int64 [E])
  int64_t alltoall_bytes = 0;         // expert parallel: bytes this rank sent to others (fwd + bwd)
  double alltoall_s = 0.0;            //   and the seconds spent in those exchanges
};
// One optimizer step over grad_accum micro-batches (x0 int64 [B, L] each): noising seeded by
// (p.seed, step, micro), forward under bf16 autocast if p.bf16, backward, clip. The optimizer
// is NOT stepped when the loss or gradient norm is non-finite (the caller decides).
// `teacher` (see load_distill_teacher): the objective becomes p.distill_weight * KL +
// (1 - p.distill_weight) * CE (+ aux losses), the teacher running its own token routing.
// `dp`: micro_x0 are global batches; noise is drawn for all rows (so it matches one process),
// this rank trains rows [dp->first, +dp->count), gradients are averaged across ranks during the
// last micro-batch's backward, and the losses returned are the global means. With expert parallelism
// (dp->ep > 1) the MoE layers exchange tokens, expert shards reduce over their replicas and the
// clipping norm counts every shard once.
StepOutput forward_backward(MoeDlm& model, const std::vector<torch::Tensor>& micro_x0, int64_t step,
                            const TrainParams& p, moe::RoutingSummary* routing = nullptr,
                            MoeDlm* teacher = nullptr, DataParallel* dp = nullptr);

// The frozen self-distillation teacher from model dir `dir` (f32, eval, no gradients). UserError
// naming the config field when its architecture or vocabulary differs from `student`.
MoeDlm load_distill_teacher(const std::string& dir, const ModelConfig& student);

// Newest `checkpoints/step-*` directory under out_dir, or "" if none.
std::string latest_checkpoint(const std::string& out_dir);

}  // namespace ecdlm
