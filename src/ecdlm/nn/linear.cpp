#include "ecdlm/nn/linear.h"

#include "ecdlm/kernels/small_m.h"
#include "ecdlm/nn/init.h"

namespace ecdlm {

LinearNoBiasImpl::LinearNoBiasImpl(int64_t in, int64_t out) {
  weight = register_parameter("weight", torch::empty({out, in}));
  if (weight_init_enabled()) torch::nn::init::normal_(weight, 0.0, 0.02);
}

torch::Tensor LinearNoBiasImpl::forward(const torch::Tensor& x) { return kernels::linear(x, weight); }

SwiGluMlpImpl::SwiGluMlpImpl(int64_t hidden, int64_t inter) {
  gate_proj = register_module("gate_proj", LinearNoBias(hidden, inter));
  up_proj = register_module("up_proj", LinearNoBias(hidden, inter));
  down_proj = register_module("down_proj", LinearNoBias(inter, hidden));
}

torch::Tensor SwiGluMlpImpl::forward(const torch::Tensor& x) {
  return kernels::swiglu(x, gate_proj->weight, up_proj->weight, down_proj->weight);
}

}  // namespace ecdlm
