// Random weight init can be skipped when every tensor is about to be replaced by checkpoint data:
// the empty allocations are then never written, so their pages are never touched, and a model
// bigger than RAM can be built and mapped from disk.
#pragma once
#include <cstdint>
#include <string>

namespace ecdlm {

bool weight_init_enabled();

// MoeDlm's init of one parameter, by its model or checkpoint name: RMSNorm weights are ones, output
// projections (attention dense / o_proj, every down_proj) N(0, 0.02 / sqrt(2 layers)), the rest
// N(0, 0.02). For initializers that work tensor by tensor (`init`, the synthetic bench model).
struct ParamInit {
  bool ones = false;
  double std = 0.02;
};
ParamInit param_init(const std::string& name, int64_t num_hidden_layers);

class SkipWeightInit {
 public:
  SkipWeightInit();
  ~SkipWeightInit();
  SkipWeightInit(const SkipWeightInit&) = delete;
  SkipWeightInit& operator=(const SkipWeightInit&) = delete;

 private:
  bool prev_;
};

}  // namespace ecdlm
