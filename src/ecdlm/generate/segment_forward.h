// One batched forward over "segments": each segment is a run of whole blocks of one sequence that
// continues that sequence's own KV cache (its own length, so its own RoPE positions and
// block-causal mask). Rows at different positions / block indices share the forward:
//  - per-token parts (embeddings, norms, QKV and output projections, dense MLPs, token-choice
//    and coreset MoE routing) run once on all segments' tokens concatenated, [1, N, D];
//  - attention runs per segment against that segment's cache (no padding, no cross-row keys).
// The math per token is the one MoeDlmImpl::forward does for the segment alone (KV cache
// continued, kv_append_n prefix appended), so the result does not depend on the other rows:
// coreset chunks align to segment starts because every segment is whole blocks and the block
// length is a multiple of the chunk (validate_params). Two model families need more care:
//  - expert-choice MoE picks tokens per sequence with a capacity from its mask ratio: segments
//    must then all have the same length and run as [B, L, D] (one sequence per segment);
//  - token choice with a capacity factor pools capacity over the forward's tokens (as training
//    does): the MoE layer then runs per segment, so drops depend on the row alone.
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <vector>

#include "ecdlm/model/moe_dlm.h"
#include "ecdlm/moe/inference_routing.h"

namespace ecdlm::gen {

struct Segment {
  torch::Tensor ids_L;   // int64 [len]: whole blocks continuing `kv` (len % block_length == 0)
  KvCache* kv = nullptr; // the row's cache; its length is the segment's first position
  int64_t append_n = 0;  // append the K/V of the first append_n positions (0: none)
  int64_t stats_n = 0;   // > 0: unique experts over the last stats_n positions (ForwardStat)
};

struct SegmentForwardResult {
  torch::Tensor hidden_ND;               // final-norm hidden states of every segment, concatenated
  std::vector<int64_t> offset;           // segment s starts at row offset[s] of hidden_ND
  std::vector<double> unique_experts, expert_bytes;  // per segment (stats_n > 0), as ForwardStat
};

// Runs in whatever grad / eval mode the caller set (decoders: eval + NoGradGuard). Throws
// std::invalid_argument for segments that break the rules above (caller bug, not user input).
SegmentForwardResult forward_segments(MoeDlm& model, const std::vector<Segment>& segs, int64_t block_length,
                                      const moe::InferenceRouting* routing);

// Whether forward_segments can run segments of different lengths in one call (not expert choice).
bool segments_may_differ(const ModelConfig& cfg);
// Token choice with a capacity factor: a segment's drops depend on its own length (run per segment).
bool moe_capacity_depends_on_input(const ModelConfig& cfg);

}  // namespace ecdlm::gen
