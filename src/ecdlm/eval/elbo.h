// ELBO perplexity on held-out windows with deterministic masks: the same windows, t and masks
// every time (seeded by (eval seed, window, sample)), so numbers are comparable across runs.
#pragma once
#include <nlohmann/json.hpp>

#include <functional>
#include <vector>

#include "ecdlm/data/batcher.h"
#include "ecdlm/model/moe_dlm.h"
#include "ecdlm/moe/inference_routing.h"
#include "ecdlm/moe/routing_stats.h"
#include "ecdlm/train/diffusion.h"

namespace ecdlm {

struct EvalParams {
  int64_t max_windows = 64;      // validation windows of seq_len tokens
  int64_t mask_samples = 4;      // independent (t, mask) draws per window
  int64_t batch_size = 16;
  uint64_t seed = 20260401;
  std::vector<int64_t> bins = {4, 10};
  bool bf16 = true;              // autocast matmuls to bf16 (fp32 router/softmax/loss)
  moe::InferenceRouting routing; // MoE routing policy of the eval forwards (token = the model's own)
  // uniform: every position masked with probability t (the training objective). semi-ar: as the
  // block decoder sees the model while it decodes one block: the blocks before it clean, the block
  // noised with t, the blocks after it fully masked (input only, not scored). One block per
  // (window, sample), drawn uniformly; the loss is scaled by the block count, so it estimates the
  // same per-token NELBO of the semi-autoregressive factorization.
  std::string mask_mode = "uniform";
  int64_t block_length = 32;     // semi-ar block; also the unit of unique_experts_per_block
  // Distributed evaluation (train): this process evaluates the batches i with i % parts == part;
  // `all_reduce` (an in-place sum over the processes, each part counted once) merges the partial
  // sums, so every process returns the one-process result. parts 1: every batch, nothing merged.
  int64_t part = 0, parts = 1;
  std::function<void(std::vector<double>&)> all_reduce;
};

struct EvalResult {
  double loss = 0.0;             // mean 1/r-weighted masked CE per token (NELBO / token)
  double ppl = 0.0;              // exp(min(20, loss))
  int64_t sequences = 0;
  std::vector<BinnedLoss> per_bin;
  // EC only (empty for TC): mean capacity C per sequence over the MoE layers, per r bin, and
  // the experts per token it buys, k = C * E / L. Shows what a capacity schedule actually used.
  std::vector<BinnedLoss> capacity_per_bin;
  int64_t num_experts = 0, seq_len = 0;
  moe::RoutingSummary routing;
  // Distinct routed experts per aligned block of block_length tokens (what a block must load),
  // mean over blocks, sequences and MoE layers; 0 for a dense model.
  double unique_experts_per_block = 0.0;
  std::string mask_mode;
  int64_t block_length = 0;
  double seconds = 0.0;
  nlohmann::json to_json() const;
};

// Cloze accuracy: in each window a span of `span` tokens starting at the middle is masked and
// predicted in one forward (argmax); accuracy over all span tokens.
struct ClozeResult {
  double accuracy = 0.0;
  int64_t tokens = 0;
  std::vector<int64_t> correct_per_window;  // summed over positions: paired comparisons between models
};
// Masks `span` tokens of every window and predicts them in one forward (argmax). `positions`
// spans per window, one forward each, centred at (i + 1/2)·L/positions: 1 = mid-window; more
// positions give a larger, lower-noise cloze set from the same held-out windows.
ClozeResult evaluate_cloze(MoeDlm& model, const data::EvalWindows& windows, int64_t span, const EvalParams& p,
                           int64_t positions = 1);

// `progress(done, total)` is called after each batch (may be empty).
EvalResult evaluate_elbo(MoeDlm& model, const data::EvalWindows& windows, const EvalParams& p,
                         const std::function<void(int64_t, int64_t)>& progress = {});

}  // namespace ecdlm
