// Masked-diffusion decoding. llada_generate is the LLaDA semi-autoregressive low-confidence
// remasking sampler (dmoe-llada2.md §4.3); the sampler pieces below (filtering, Gumbel-max,
// confidence, transfer schedule, top-n commit) are shared with the threshold decoders.
#pragma once
#include <ATen/core/Generator.h>
#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "ecdlm/model/moe_dlm.h"
#include "ecdlm/moe/inference_routing.h"

namespace ecdlm::gen {

struct DecodeParams {
  // gen_length % block_length == 0 and steps % (gen_length / block_length) == 0 are required.
  int64_t gen_length = 128, block_length = 32, steps = 128;
  double temperature = 0.0;  // 0 = greedy argmax; > 0 Gumbel-max in float64 as LLaDA
  int64_t top_k = 0;         // keep the k largest logits (0 = off)
  double top_p = 1.0;        // nucleus filter (1 = off)
  std::string remasking = "low_confidence";  // low_confidence | random | margin | entropy
  double cfg_scale = 0.0;    // classifier-free guidance; un-conditional = prompt replaced by mask
  int64_t block_causal = 0;  // > 0: ForwardOptions.block_length (block-causal models); 0 = full
  uint64_t seed = 0;
  bool stop_at_eos = true;   // positions after the first EOS become EOS; stop once all rows ended
  int64_t mask_id = -1;      // -1: the config's mask_token_id
  moe::InferenceRouting routing;  // MoE routing policy for every forward
};

struct StepInfo {
  int64_t step, total_steps, block;  // step counts over all blocks, 0-based
  const torch::Tensor* x_BL;         // the whole canvas [B, P + gen_length] after this step
  double forward_ms;                 // this step's model call(s)
  int64_t committed;                 // tokens committed this step, per row
};
using StepCallback = std::function<bool(const StepInfo&)>;  // return false to cancel

struct DecodeResult {
  // int64 [B, gen_length]. With stop_at_eos (and not cancelled) everything after a row's first
  // EOS is EOS. A cancelled run returns the canvas as it was, masks included.
  torch::Tensor tokens_BG;
  std::vector<int64_t> lengths;  // per row: generated tokens before the first EOS (or gen_length)
  int64_t forwards = 0;          // model calls (a CFG step is one call on 2B rows)
  double seconds = 0.0;
  std::vector<double> forward_ms;
  bool cancelled = false;
};

// prompt_BP int64 [B, P] (P may be 0). Runs under NoGradGuard with the model in eval mode.
// For expert-choice models every call passes mask_ratio_B = #MASK in the row / row length (the
// eval-consistent rule of ec-dlm.md §7; the CFG rows get their own ratio).
// Deterministic for a given seed. Throws UserError for invalid params or a model without a mask id.
DecodeResult llada_generate(MoeDlm& model, const torch::Tensor& prompt_BP, const DecodeParams& p,
                            const StepCallback& cb = {});

// Throws UserError naming the DecodeParams field for an invalid combination.
void validate_params(const DecodeParams& p);

// ---- Sampler building blocks (shared by decoders) -------------------------------------------

enum class Remasking { kLowConfidence, kRandom, kMargin, kEntropy };
Remasking parse_remasking(const std::string& name);  // UserError listing the valid names

// Sets logits outside the top-k / nucleus to -inf along the last dim (LLaDA2 sampler order:
// top-k, then top-p with the first sorted entry always kept). top_k <= 0 / top_p >= 1 = off.
torch::Tensor filter_top_k_top_p(const torch::Tensor& logits_NV, int64_t top_k, double top_p);

struct Candidates {
  torch::Tensor token_N;  // int64 proposed token per row
  torch::Tensor conf_N;   // f64 confidence (higher = commit first)
};

// One candidate per row of logits_NV (f32 [N, V]):
//  - temperature 0: argmax; > 0: argmax(filtered(l / T) - log(-log u)), u ~ U(0,1) in float64
//    (LLaDA's exp(l) / (-log u)^T in log form: same argmax, no overflow);
//  - confidence from p = softmax of the filtered, un-tempered logits: low_confidence p(token),
//    margin p1 - p2, entropy sum p log p (= -H), random U(0,1).
Candidates sample_candidates(const torch::Tensor& logits_NV, double temperature, int64_t top_k,
                             double top_p, Remasking remasking, at::Generator& gen);

// LLaDA schedule: n / steps per step, the first (n % steps) steps one more.
std::vector<int64_t> transfer_schedule(int64_t n, int64_t steps);

// Bool [B, L]: the `n` highest-confidence entries of each row among those > -inf (ties go to the
// lower index); fewer when a row has fewer candidates.
torch::Tensor select_top_n(const torch::Tensor& conf_BL, int64_t n);

}  // namespace ecdlm::gen
