// Token-choice routing at inference in one pass over plain arrays. A cached decoding step routes
// 32 tokens per layer; route_token_choice's ~25 small torch ops cost 0.8 ms of a 22 ms MoE layer
// at LLaDA2.0-mini's shapes (BM_MoeDecodeLayer), a fixed cost the uncached forward amortizes over
// 10x the tokens. Same selection and gates as route_token_choice (dropless, no losses).
#pragma once
#include <torch/torch.h>

#include "ecdlm/moe/router.h"

namespace ecdlm::moe {

// True when route_token_choice_infer can stand in for route_token_choice: no autograd, dropless,
// no losses, f32 logits.
bool route_infer_applies(const torch::Tensor& logits_TE, const TokenChoiceParams& p);

// logits_TE f32 [T, E]; bias_E f32 [E] or undefined; allowed_TE bool [T, E] or undefined.
// Ties break toward the lower index for groups and experts (route_token_choice does so when
// restricted; unrestricted, torch.topk leaves the order of exact ties undefined).
RoutingPlan route_token_choice_infer(const torch::Tensor& logits_TE, const torch::Tensor& bias_E,
                                     const TokenChoiceParams& p, const torch::Tensor& allowed_TE = torch::Tensor());

}  // namespace ecdlm::moe
