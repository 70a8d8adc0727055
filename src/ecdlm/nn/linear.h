// Bias-free linear and SwiGLU modules: model/ builds attention projections and dense FFN layers
// from them, moe/ its shared expert. Registered under the checkpoint's tensor names.
#pragma once
#include <torch/torch.h>

namespace ecdlm {

// Bias-free linear stored as `<name>.weight` [out, in].
class LinearNoBiasImpl : public torch::nn::Module {
 public:
  LinearNoBiasImpl(int64_t in, int64_t out);
  // Few-row bf16 inference (a cached decoding step) takes the small-M kernel (kernels/small_m.h).
  torch::Tensor forward(const torch::Tensor& x);
  torch::Tensor weight;
};
TORCH_MODULE(LinearNoBias);

// SwiGLU: down(silu(gate(x)) * up(x)). Dense FFN layers and the shared expert.
class SwiGluMlpImpl : public torch::nn::Module {
 public:
  SwiGluMlpImpl(int64_t hidden, int64_t inter);
  torch::Tensor forward(const torch::Tensor& x);
  LinearNoBias gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};
};
TORCH_MODULE(SwiGluMlp);

}  // namespace ecdlm
