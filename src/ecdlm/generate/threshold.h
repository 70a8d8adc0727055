// Threshold block decoding (dmoe-llada2.md §4.1, §4.2, §4.4): blocks aligned to absolute position
// 0, block-causal attention, every masked position whose confidence passes a threshold is
// committed, with a scheduled top-n fallback (LLaDA2) or a top-1 / factor rule (Fast-dLLM).
// With the KV cache the prompt's whole blocks are prefilled once, each step forwards only the
// current block, and a finished block is forwarded once more to append its K/V (exact for
// block-causal models: a block never sees later ones).
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

#include "ecdlm/generate/decoder.h"
#include "ecdlm/model/moe_dlm.h"
#include "ecdlm/moe/inference_routing.h"

namespace ecdlm::gen {

enum class ThresholdRule {
  kLlada2,        // commit {conf > t} if it holds >= n[s] positions, else the top-n[s] (§4.1)
  kFastThreshold, // commit the top-1 and every other with conf >= t, until the block is done (§4.4)
  kFastFactor,    // Fast-dLLM factor f: thresholds t_k = 1 - f / (k + 2) over sorted confidences
};
ThresholdRule parse_threshold_rule(const std::string& name);  // llada2 | fast-threshold | fast-factor

enum class Confidence { kProb, kMargin, kNegEntropy, kRandom };
Confidence parse_confidence(const std::string& name);  // prob | margin | entropy | random

struct ThresholdParams {
  int64_t gen_length = 256, block_length = 32, steps = 32;
  ThresholdRule rule = ThresholdRule::kLlada2;
  double threshold = 0.95;
  double factor = 1.0;              // kFastFactor
  int64_t minimal_topk = 1;         // LLaDA2: steps = min(steps, gen_length / minimal_topk)
  double temperature = 0.0;         // 0: argmax (confidence = softmax prob of the argmax)
  int64_t top_k = 0;
  double top_p = 1.0;
  Confidence confidence = Confidence::kProb;
  bool eos_early_stop = false;      // stop as soon as an EOS is committed with no MASK before it
  int64_t eos_id = -1;              // -1: the model config's eos_token_id; -2: none (ignore EOS)
  std::vector<int64_t> stop_ids;    // more ids that end the output as EOS does (chat: <|role_end|>,
                                    // pad); ignored with eos_id -2
  int64_t mask_id = -1;             // -1: the model config's mask_token_id (LLaDA2 configs have
                                    //     none: the CLI takes <|mask|> from the tokenizer)
  bool kv_cache = true;
  uint64_t seed = 0;
  moe::InferenceRouting routing;
};

// Per denoising forward (prefill and block-commit passes excluded, as the dMoE metric).
struct ForwardStat {
  int64_t block = 0, step = 0, tokens_in = 0, committed = 0;
  double ms = 0.0;
  double unique_experts_per_layer = 0.0;  // distinct experts over the block's positions, mean over MoE layers
  double expert_bytes = 0.0;              // bytes of the routed experts' weights those experts hold, all layers
  // Time split when profiling is on (util/profile.h): attention, router, routed + shared experts,
  // dense MLP layers, LM head (the rest of ms: embeddings, norms, sampling and the commit).
  double attention_ms = 0.0, router_ms = 0.0, experts_ms = 0.0, dense_ms = 0.0, head_ms = 0.0;
};

struct ThresholdResult {
  std::vector<int64_t> tokens;      // generated tokens, cut after the first EOS / stop id (inclusive)
  int64_t forwards = 0;             // denoising forwards
  int64_t cache_forwards = 0;       // prefill + block-commit forwards
  int64_t ride_along_appends = 0;   // blocks appended by the next block's first denoising forward
  double seconds = 0.0;
  std::vector<ForwardStat> per_forward;
  double avg_unique_experts_per_layer = 0.0;
  bool eos_stopped = false, cancelled = false;
};

// One sequence: prompt ids (may be empty). Runs in eval mode under NoGradGuard. Deterministic for
// a seed. UserError for invalid params (names the field), a prompt longer than the model's
// context, or a model without a mask id.
ThresholdResult threshold_generate(MoeDlm& model, const std::vector<int64_t>& prompt, const ThresholdParams& p,
                                   const StepCallback& cb = {});

// Batched decoding (threshold_batch.cpp): one forward per step for every row still working on the
// current block, per-row state (committed positions, EOS / early stop, forwards, RNG seeded
// p.seed + row index), rows that finish leave the batch and the KV cache. Blocks are aligned to
// absolute position 0 and the cache must hold the same positions for every row, so rows are
// grouped by their number of whole prompt blocks (prompt length / block length); each group is
// decoded as one batch, groups one after another (left padding would shift the block grid).
// Inside a group, rows may differ in prompt length: the first block holds each row's own
// prompt tail. Output equals threshold_generate row by row (tests), except on token-choice models
// with a capacity factor, whose capacity pool is the whole forward batch (as in training).
// ForwardStat.ms is the shared batched forward's time (sampling excluded); seconds run from the
// call's start to the row's end. The callback runs once per batched forward: x_BL is the group's canvas [rows, len],
// committed the sum over its rows. A cancel marks every unfinished row cancelled.
std::vector<ThresholdResult> threshold_generate_batch(MoeDlm& model, const std::vector<std::vector<int64_t>>& prompts,
                                                      const ThresholdParams& p, const StepCallback& cb = {});

// Unique experts (mean over MoE layers) and the bytes those experts' weights hold (all layers),
// per input sequence, over rows [row0, row0 + n) of the last forward's B sequences of L_in tokens.
struct ExpertStats {
  torch::Tensor unique_B, bytes_B;  // f64 [B]
};
ExpertStats last_forward_expert_stats(MoeDlm& model, int64_t B, int64_t L_in, int64_t row0, int64_t n);

void validate_params(const ThresholdParams& p, const ModelConfig& c, int64_t prompt_len);

// Every id that ends the output, EOS first (eos_id -1: the config's; -2: none, which also drops
// stop_ids), then the extra stop ids; duplicates removed.
std::vector<int64_t> output_stop_ids(const ThresholdParams& p, const ModelConfig& c);

// The commit decision of one step over the block's candidates (conf -inf = not a candidate):
// bool mask of positions to commit. n = the LLaDA2 schedule's count for this step.
torch::Tensor threshold_commit(const torch::Tensor& conf_L, ThresholdRule rule, double threshold, double factor,
                               int64_t n);

// Forward options of a block-decoding step: block-causal over blocks of L, the given routing, no LM
// head (it runs on the still-masked positions only). With kv_append, the forward appends its K/V to
// `kv` (prefill and the pass that commits a finished block).
ForwardOptions block_step_options(int64_t L, const moe::InferenceRouting* routing, KvCache* kv = nullptr,
                                  bool kv_append = false);

// Whether a finished block's K/V ride along with the next block's first forward (2L tokens, the
// first L appended) instead of a forward of their own: with the cache, on token-choice models.
// Exact under block-causal attention, and routing sees the same tokens per coreset chunk (chunks
// align to block starts); expert-choice layers take capacity from the input's mask fraction.
bool kv_rides_along(const ThresholdParams& p, const ModelConfig& cfg);

// The LM head on final hidden states [N, D] (timed as prof::kHead): f32 (or wider) logits [N, V].
torch::Tensor head_logits(MoeDlm& model, const torch::Tensor& hidden_ND);

// Candidates over a block of L positions from the logits of its masked positions only (rows_N:
// their indices, in order): conf_N [L] f64 (-inf at unmasked positions), token_N [L] int64.
// Sampling the masked positions alone gives the same greedy decisions as sampling all of them
// and skips the LM head and softmax on committed positions.
Candidates block_candidates(const torch::Tensor& logits_NV, const torch::Tensor& rows_N, int64_t L,
                            const ThresholdParams& p, at::Generator& gen);

// One draw per row of probs_NV (rows of non-negative weights): the inverse CDF of one U(0, 1)
// per row, accumulated in f64. The distribution torch::multinomial samples, for one uniform per
// row instead of V exponential draws (at V = 32768 those took 6.8 ms of a 76 ms cached step).
torch::Tensor sample_rows(const torch::Tensor& probs_NV, at::Generator& gen);

// Candidate tokens and confidences for logits_LV (f32): argmax at T = 0, else a draw
// (sample_rows) from softmax(filtered(l / T)); confidence from the same distribution.
Candidates sample_threshold(const torch::Tensor& logits_LV, double temperature, int64_t top_k, double top_p,
                            Confidence c, at::Generator& gen);

}  // namespace ecdlm::gen
