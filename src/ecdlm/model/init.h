// MoeDlm's init rule by parameter name. The skip switch (weight_init_enabled, SkipWeightInit) lives
// in nn/init.h, below model/ and moe/, which both honour it.
#pragma once
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

}  // namespace ecdlm
