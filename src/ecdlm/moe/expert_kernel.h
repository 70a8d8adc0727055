// A bf16 SwiGLU expert for a handful of rows, the shape of KV-cached decoding: a 32-token block
// routed top-8 over 256 experts gives each expert about 4 tokens. At that M a GEMM only streams
// the weights, and oneDNN's bf16 path reaches about 2/3 of the memory bandwidth a plain
// AVX512-BF16 dot-product loop does, so the MoE step runs this kernel instead
// (bench: `ecdlm bench generate --moe-expert-kernel auto|torch`).
#pragma once
#include <torch/torch.h>

#include <cstdint>

namespace ecdlm::moe {

enum class ExpertKernel { kAuto, kTorch };

// Process-wide choice (inference flag --moe-expert-kernel). kAuto uses the small-M kernel where
// `small_m_kernel_applies` holds, torch's linear everywhere else; kTorch always uses torch.
void set_expert_kernel(ExpertKernel k);
ExpertKernel expert_kernel();
ExpertKernel parse_expert_kernel(const std::string& s, const std::string& flag);
const char* expert_kernel_name(ExpertKernel k);

// Rows up to which the small-M kernel beats torch's bf16 GEMM on this machine (measured: 4 rows
// 1.44x, 8 rows 1.3x; at 32 rows oneDNN is compute-bound and faster).
constexpr int64_t kSmallMMaxRows = 16;

// Whether this CPU executes AVX512-BF16 (vdpbf16ps).
bool cpu_has_avx512_bf16();

// True when x_MK and the weights are bf16, contiguous, without autograd, M <= kSmallMMaxRows,
// the CPU has AVX512-BF16 and the process choice is kAuto.
bool small_m_kernel_applies(const torch::Tensor& x_MK, const torch::Tensor& w_NK);

// small_m_kernel_applies for all three matrices of an expert.
bool small_m_expert_applies(const torch::Tensor& x_MD, const torch::Tensor& gate_FD, const torch::Tensor& up_FD,
                            const torch::Tensor& down_DF);

// y_MN (f32) = x_MK · w_NKᵀ, bf16 inputs, f32 accumulation. Any M, N, K (tails masked).
torch::Tensor small_m_linear_bf16(const torch::Tensor& x_MK, const torch::Tensor& w_NK);

// The expert: y_MD = (silu(x·gateᵀ) ⊙ (x·upᵀ)) · downᵀ. The hidden h is rounded to bf16 once
// (torch's path rounds after each op); y is returned in bf16 like torch's linear.
torch::Tensor small_m_expert_bf16(const torch::Tensor& x_MD, const torch::Tensor& gate_FD,
                                  const torch::Tensor& up_FD, const torch::Tensor& down_DF);

}  // namespace ecdlm::moe
