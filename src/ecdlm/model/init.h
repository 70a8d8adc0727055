// MoeDlm's init rule by parameter name. The skip switch (weight_init_enabled, SkipWeightInit) lives
// in nn/init.h, below model/ and moe/, which both honour it.
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <string>

#include "ecdlm/nn/init.h"

namespace ecdlm {

// MoeDlm's init of one parameter, by its model or checkpoint name: RMSNorm weights are ones, output
// projections (attention dense / o_proj, every down_proj) N(0, 0.02 / sqrt(2 layers)), the rest
// N(0, 0.02). For initializers that work tensor by tensor (`init`, the synthetic bench model).
struct ParamInit {
  bool ones = false;
  double std = 0.02;
};
ParamInit param_init(const std::string& name, int64_t num_hidden_layers);

// A random model whose routing spreads like a trained one's, for speed and memory studies (a
// plain random model routes almost every token to the same few experts). Token embeddings N(0, 1),
// router weights N(0, 4 / D) so that sigmoid scores differ between tokens, and a selection-only
// popularity bias -a ln(1 + rank) over shuffled experts. a = 0.045 is calibrated on the metric the
// dMoE paper reports (dmoe-llada2.md gotcha 13): a 256-token token-routing decode of the 3-layer
// LLaDA2.0-mini shape then uses about 69 distinct experts per 32-token block, against 69.5 measured
// on LLaDA2.0-mini. Used by bench generate's synthetic model and `init --synthetic-routing`.
constexpr double kSyntheticPopularityBias = 0.045;
torch::Tensor synthetic_router_weight(int64_t num_experts, int64_t hidden, c10::optional<at::Generator> gen);
torch::Tensor synthetic_expert_bias(int64_t num_experts, c10::optional<at::Generator> gen);

}  // namespace ecdlm
