// Step-level batched threshold decoding for continuous batching (the server's decoder). The
// batcher owns the running rows; each has its own prompt, ThresholdParams (seed, gen_length,
// stop ids, temperature / top-k / top-p, rule, threshold, steps), canvas, RNG and KV cache. Rows
// join between steps (add) and leave at once when they finish or are cancelled; step() runs one
// batched forward (forward_segments) for every row that is working, whatever its block index:
//  - a row's segment is its current block, preceded by whatever its cache still lacks (the
//    prompt's whole blocks when it joins, the previous block once it is final), appended to its
//    own cache in the same forward (the ride-along of threshold_generate, extended to prefill);
//  - expert-choice models take capacity per sequence from the input's mask ratio, so there the
//    missing blocks run first as a cache forward of their own (as threshold_generate does), and
//    the step forward is [rows, block_length]; token choice with a capacity factor prefills the
//    prompt in a forward of its own too, and runs its MoE per row (forward_segments).
// The per-row decisions are threshold_generate's (same RNG stream per seed, same commit rule and
// EOS handling), so a row's tokens do not depend on the other rows (tests: alone vs in a batch,
// and vs threshold_generate). Batch-wide settings: block length and MoE routing (one forward, one
// routing policy, one coreset chunk grid); the KV cache is always on.
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "ecdlm/generate/threshold.h"

namespace ecdlm::gen {

struct BatcherParams {
  int64_t block_length = 32;
  moe::InferenceRouting routing;
};

// What happened to one row in a step.
struct RowEvent {
  int64_t id = 0;
  int64_t block = 0;              // the block the step worked on
  bool stepped = false;           // the row was in this step's forward (not just dropped)
  double unique_experts = 0.0;    // that forward's unique experts per layer over the row's block
  std::vector<int64_t> canvas;    // that block's generated positions after the step (mask ids included)
  std::vector<int64_t> final_tokens;  // tokens that became final this step (a finished block), cut at a stop id
  bool finished = false;
  ThresholdResult result;         // when finished: as threshold_generate returns it
};

struct StepStats {
  int64_t rows = 0;               // rows in the step forward
  int64_t tokens_in = 0;          // tokens the forward(s) took
  int64_t forwards = 0;           // model calls (step + cache forwards)
  double ms = 0.0;                // forward(s) + sampling
  double unique_experts_per_block = 0.0;  // mean over the stepped rows
};

class ContinuousBatcher {
 public:
  ContinuousBatcher(MoeDlm& model, const BatcherParams& bp);
  ~ContinuousBatcher();
  ContinuousBatcher(const ContinuousBatcher&) = delete;
  ContinuousBatcher& operator=(const ContinuousBatcher&) = delete;

  // Validates (UserError naming the field: validate_params, token ids, a block length or routing
  // other than the batch's, kv_cache off) and queues the row for the next step. Returns its id.
  int64_t add(const std::vector<int64_t>& prompt, const ThresholdParams& p);
  // The row leaves before the next step (its cache is freed then); unknown ids are ignored.
  void cancel(int64_t id);
  // One step; rows that finish (or were cancelled) are reported once and dropped.
  std::vector<RowEvent> step(StepStats* stats = nullptr);

  int64_t rows() const;          // rows held (running or waiting for their first step)
  int64_t kv_bytes() const;      // bytes held by the rows' KV caches
  const BatcherParams& params() const { return bp_; }
  // Whether a row with these settings can join this batcher (same block length and routing).
  bool compatible(const ThresholdParams& p) const;

 private:
  struct Row;
  MoeDlm& model_;
  BatcherParams bp_;
  int64_t next_id_ = 0;
  std::vector<std::unique_ptr<Row>> rows_;
};

}  // namespace ecdlm::gen
