// The LM head of a decoding step: the still-masked positions of every row of the batch times the
// whole [V, D] head. The small-M kernel takes up to 16 rows (f32 logits from a fixed-order sum);
// beyond that torch's linear gave bf16-rounded logits, so a row's logits depended on how many
// masked positions the batch had. This takes any row count on the AVX512 backend with the same
// dot tiles, so a row's logits are the same bits alone and in any batch.
#pragma once
#include <torch/torch.h>

namespace ecdlm::kernels {

// x_MK, w_NK: bf16, contiguous, CPU, no autograd, M >= 1, the AVX512 backend (kernels/small_m.h:
// auto on a CPU without AMX, or avx512). On AMX CPUs and with --kernel torch: false.
bool head_linear_applies(const torch::Tensor& x_MK, const torch::Tensor& w_NK);
// y_MN (f32) = x_MK · w_NKᵀ, per row bit-identical to small_m_linear on that row alone.
// Requires head_linear_applies.
torch::Tensor head_linear(const torch::Tensor& x_MK, const torch::Tensor& w_NK);

}  // namespace ecdlm::kernels
