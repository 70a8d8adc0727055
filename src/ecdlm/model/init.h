// MoeDlm's init rule by parameter name. The skip switch (weight_init_enabled, SkipWeightInit) lives
// in nn/init.h, below model/ and moe/, which both honour it.
#pragma once
#include <cmath>
#include <cstdint>
#include <string>

#include <torch/torch.h>

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

// Random weights at std 0.02 route unrealistically: after layer 0 every position carries nearly
// the same hidden state and picks the same few experts (spec dmoe-llada2.md, gotcha 17), so
// expert-sparsity and memory results on such a model mean little. The recipe of the synthetic
// benchmark models keeps positions apart and spreads the router: token embeddings N(0, 1), router
// weights N(0, 2 / sqrt(hidden)) so sigmoid scores differ, and a selection-only popularity bias
// -a ln(1 + rank) over shuffled experts. a = 0.045 was calibrated on the 4-layer synthetic
// LLaDA2.0-mini shape: its token-routed decode touches ~69 experts per 32-token block, the paper's
// 69.5 on the real model; the 20-layer shape gives 68.6. Both with sampled output (temperature 1):
// greedy decoding of random weights repeats one token and touches far fewer. Measure and say it.
struct RoutingInit {
  double embedding_std = 1.0;
  double router_std_sqrt_d = 2.0;  // the router's std times sqrt(hidden)
  double popularity_bias = 0.045;
  double router_std(int64_t hidden) const { return router_std_sqrt_d / std::sqrt(static_cast<double>(hidden)); }
};
// One layer's popularity bias: -a ln(1 + rank), ranks a random permutation of the experts (f32).
torch::Tensor popularity_bias(int64_t num_experts, double a, c10::optional<at::Generator> gen = c10::nullopt);

}  // namespace ecdlm
