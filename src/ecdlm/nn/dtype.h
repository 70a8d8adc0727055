// Dtype rule shared by model/ and moe/.
#pragma once
#include <torch/torch.h>

namespace ecdlm {

// The reference computes norms, router, softmax and the MoE sum in fp32; a float64 model (gradient
// checks) must stay float64, so "fp32" means "fp32 or wider".
inline torch::Tensor to_f32_or_wider(const torch::Tensor& x) {
  return x.scalar_type() == torch::kFloat64 ? x : x.to(torch::kFloat32);
}

}  // namespace ecdlm
