// DES-S / DES-V: OUR INTERPRETATION of the dMoE paper's "Dynamic Expert Sharing" baselines
// (dmoe-llada2.md §1.6; DES is arXiv 2602.00879). Neither paper releases this code, and the spec
// gives one sentence per method, so the rules below are ours, written to match those sentences:
//   DES-S ("DES-Seq", intra-sequence sharing, "sequence-level routing ... more adaptive expert
//         allocation"): inside each aligned chunk (the parallel-decoding block) the n tokens' n x E
//         biased router scores compete together, SeqTopK-style: the top ceil(ratio * n * k)
//         (token, expert) pairs are kept and the coreset is every expert that owns one of them.
//         Tunable: ratio (1 = the chunk's token-routing pair budget; E / k keeps every expert).
//   DES-V ("DES-Vote", saliency-aware voting, "consolidating router-derived preferences across
//         tokens ... aggregated router weights"): each token votes for the k experts its own
//         (group-limited) routing picks, with the unbiased router score of each, so a token that
//         routes confidently (high scores) weighs more; the chunk keeps every expert whose summed
//         vote is >= threshold x the best expert's. Tunable: threshold (0 = token routing exactly).
// Both then grow the coreset to at least `min_experts` (by the same ranking, lower id on ties) and
// route each token with the model's unchanged group-limited top-k restricted to it (gates from
// the unbiased scores, renormalized over the k, as dMoE §1.2 step 8-9): per-token compute is
// unchanged and only the set of distinct experts shrinks. Coresets are per sequence and chunk.
#pragma once
#include <torch/torch.h>

namespace ecdlm::moe {

// DES-S coreset. biased_BLE f32 [B, L, E]; k = the model's experts per token. A last chunk shorter
// than `chunk` competes with the tokens it has. Returns bool [B, ceil(L / chunk), E].
torch::Tensor des_seq_coreset(const torch::Tensor& biased_BLE, int64_t k, double ratio, int64_t min_experts,
                              int64_t chunk);

// DES-V coreset. vote_BLE f32 [B, L, E]: each token's unbiased score on the experts its routing
// picked, 0 elsewhere. Returns bool [B, ceil(L / chunk), E].
torch::Tensor des_vote_coreset(const torch::Tensor& vote_BLE, double threshold, int64_t min_experts, int64_t chunk);

}  // namespace ecdlm::moe
