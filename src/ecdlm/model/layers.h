// Dense building blocks of MoeDlm. Modules are XxxImpl + TORCH_MODULE, registered under the
// checkpoint's tensor names so loading is a name lookup. LinearNoBias and SwiGluMlp (nn/linear.h)
// are shared with moe/.
#pragma once
#include <torch/torch.h>

#include "ecdlm/nn/dtype.h"
#include "ecdlm/nn/linear.h"

namespace ecdlm {

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
