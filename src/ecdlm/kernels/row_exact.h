// Products whose result for a token row does not depend on how many rows share the call, for the
// decoders (inside kernels::F32TilesScope). A served row then computes the same bits alone and in
// any batch (continuous batching, issue 17), where a BLAS or oneDNN picks its blocking, and so its
// summation order, from M, and the small-M kernels hand over to torch above their row limit.
// What is row-exact where (the rest of small_m.h is unchanged):
//  - f32 (AVX512F, backend not torch): f32_rows below at any M (the router's logits);
//  - bf16 on the AVX512 backend (auto on a CPU with AVX512-BF16 and no AMX, or --kernel avx512):
//    kernels::linear and kernels::swiglu take the dot tiles at any M inside the scope (head_linear,
//    the grouped SwiGLU), as the routed experts and the LM head already do;
//  - AMX and --kernel torch: not row-exact (AMX tiles up to 64 rows, oneDNN above).
#pragma once
#include <torch/torch.h>

namespace ecdlm::kernels {

// x_MK, w_NK f32, contiguous, CPU, no autograd, M >= 1, AVX512F, backend not torch, inside an
// F32TilesScope.
bool f32_rows_applies(const torch::Tensor& x_MK, const torch::Tensor& w_NK);
// y_MN (f32) = x_MK · w_NKᵀ with the f32 dot tiles at any M: per row bit-identical to
// small_m_linear_f32 / f32_linear on that row alone. Requires f32_rows_applies.
torch::Tensor f32_rows(const torch::Tensor& x_MK, const torch::Tensor& w_NK);

}  // namespace ecdlm::kernels
