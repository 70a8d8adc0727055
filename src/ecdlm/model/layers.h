// Dense building blocks of MoeDlm. Modules are XxxImpl + TORCH_MODULE, registered under the
// checkpoint's tensor names so loading is a name lookup.
#pragma once
#include <torch/torch.h>

namespace ecdlm {

// The reference computes norms, router, softmax and the MoE sum in fp32; a float64 model (gradient
// checks) must stay float64, so "fp32" means "fp32 or wider".
inline torch::Tensor to_f32_or_wider(const torch::Tensor& x) {
  return x.scalar_type() == torch::kFloat64 ? x : x.to(torch::kFloat32);
}

// y = w * cast_back(x_f32 * rsqrt(mean(x_f32^2) + eps)): normalize in fp32, as the reference.
class RMSNormImpl : public torch::nn::Module {
 public:
  RMSNormImpl(int64_t dim, double eps);
  torch::Tensor forward(const torch::Tensor& x);
  torch::Tensor weight;

 private:
  double eps_;
};
TORCH_MODULE(RMSNorm);

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

// NeoX rotate-half RoPE on the first `rotary_dim` dims of each head. The cos / sin tables depend
// only on the positions, so a forward builds them once for every layer's q and k.
struct RopeTable {
  torch::Tensor cos, sin;  // [1, L, 1, rotary_dim / 2] in the activations' dtype
  int64_t rotary_dim = 0;
};
// pos_L int64 [L] absolute positions; inv_freq in fp32 exactly as the reference.
RopeTable rope_table(const torch::Tensor& pos_L, int64_t rotary_dim, double theta, torch::ScalarType dtype);
// x_BLHd [B, L, H, hd].
torch::Tensor apply_rope(const torch::Tensor& x_BLHd, const RopeTable& rope);

}  // namespace ecdlm
