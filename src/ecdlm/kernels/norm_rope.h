// One-pass RMSNorm and RoPE for inference. The torch expressions take 8 (RMSNorm) and 9 (RoPE)
// dispatched ops each, about 150 a forward on LLaDA2's shape: a cost that does not shrink with
// the tokens, so it weighs most on a KV-cached step of 32 tokens. Without autograd only; where a
// call is not taken these return an undefined tensor and the caller keeps torch's expression.
// - RoPE: f32 and bf16, bit for bit (every bf16 rounding of the torch expression is replayed).
// - RMSNorm: bf16 only. Its f32 sum of squares runs in another order than torch's reduction, so
//   in f32 a no-grad forward (a distillation teacher, eval) would differ from the training
//   forward in the last bit; after the bf16 rounding the values agree.
#pragma once
#include <torch/torch.h>

namespace ecdlm::kernels {

// w * bf16(x32 * rsqrt(mean(x32^2) + eps)) over the last dim (w, x bf16; w [D], x [..., D]).
torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& w, double eps);

// NeoX rotate-half on the first rd dims of each head: x [B, L, H, hd], cos / sin [1, L, 1, rd/2]
// in x's dtype; the dims past rd pass through.
torch::Tensor rope(const torch::Tensor& x_BLHd, const torch::Tensor& cos, const torch::Tensor& sin, int64_t rd);

}  // namespace ecdlm::kernels
