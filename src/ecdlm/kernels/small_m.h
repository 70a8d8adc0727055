// bf16 products with few token rows: the shape of KV-cached decoding. A cached step forwards one
// 32-token block; a routed expert gets about 4 of its tokens, the projections all 32. At that M a
// GEMM only streams its weights, so the kernels here are built to reach memory bandwidth:
//   amx     AMX-BF16 tiles with the weight as the A operand (no weight reorder); up to 64 rows;
//   avx512  AVX512-BF16 dot products, 4 weight rows x 4 token rows; up to 16 rows;
//   torch   torch's linear (oneDNN), the reference and the fallback.
// `auto` picks the best the CPU and OS offer. Inference only: autograd inputs keep torch's path.
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

namespace ecdlm::kernels {

enum class SmallM { kAuto, kAmx, kAvx512, kTorch };

// --kernel NAME (auto | amx | avx512 | torch). A forced backend this CPU lacks is a UserError.
SmallM parse_small_m(const std::string& name, const std::string& flag);
const char* small_m_name(SmallM k);
// Process-wide choice (default kAuto) and the backend it resolves to here (kAmx, kAvx512, kTorch).
void set_small_m(SmallM k);
SmallM small_m_choice();
SmallM small_m_backend();
// Token rows up to which the backend runs (0 for torch); more rows take torch's GEMM. AMX covers
// 64 in one pass over the weights (bench: 15.5 GB/s at 64 rows against oneDNN's 6.5).
int64_t small_m_max_rows();

bool cpu_has_avx512_bf16();
bool cpu_has_amx_bf16();  // CPU support and the OS's permission for tile data

// x_MK [M, K] and w_NK [N, K]: bf16, contiguous, CPU, no autograd, 1 <= M <= small_m_max_rows().
bool small_m_applies(const torch::Tensor& x_MK, const torch::Tensor& w_NK);
bool small_m_swiglu_applies(const torch::Tensor& x_MD, const torch::Tensor& gate_FD, const torch::Tensor& up_FD,
                            const torch::Tensor& down_DF);

// y_MN (f32) = x_MK · w_NKᵀ, f32 accumulation. Requires small_m_applies.
torch::Tensor small_m_linear(const torch::Tensor& x_MK, const torch::Tensor& w_NK);
// f32 twin for the router (f32 weights): x_MK, w_NK f32, contiguous, CPU, no autograd, K >= 1,
// 1 <= M <= 64, a CPU with AVX512F and a backend other than torch. y_MN = x_MK · w_NKᵀ (f32).
bool small_m_f32_applies(const torch::Tensor& x_MK, const torch::Tensor& w_NK);
torch::Tensor small_m_linear_f32(const torch::Tensor& x_MK, const torch::Tensor& w_NK);
// The same f32 kernel for inference products up to 512 token rows (x_MK, w_NK f32, contiguous,
// CPU, no autograd, AVX512F, backend not torch): kernels::linear takes it for f32 weights. A
// row's result is independent of the other rows (fixed-order sums), unlike a BLAS whose blocking
// depends on M.
bool f32_linear_applies(const torch::Tensor& x_MK, const torch::Tensor& w_NK);
// The f32 tiles (f32_linear, f32_moe) apply only inside this scope, on this thread: the decoders
// open it. Everything else (training, a distillation teacher, eval, `logits`) keeps torch's BLAS,
// so a no-grad forward still rounds as the training forward of the same model does.
class F32TilesScope {
 public:
  F32TilesScope();
  ~F32TilesScope();
  F32TilesScope(const F32TilesScope&) = delete;
  F32TilesScope& operator=(const F32TilesScope&) = delete;

 private:
  bool prev_;
};
// Whether this thread is inside an F32TilesScope (the decoders' kernels are on).
bool f32_tiles_active();
torch::Tensor f32_linear(const torch::Tensor& x_MK, const torch::Tensor& w_NK);
// (silu(x·gateᵀ) ⊙ (x·upᵀ)) · downᵀ in bf16 [M, D]: h is rounded to bf16 once, the output once
// (torch's path rounds after each op). Requires small_m_swiglu_applies.
torch::Tensor small_m_swiglu(const torch::Tensor& x_MD, const torch::Tensor& gate_FD, const torch::Tensor& up_FD,
                             const torch::Tensor& down_DF);

// Many SwiGLU experts in one parallel region (the MoE layer of a step): x_PD holds each expert's
// rows one after another, counts[i] rows for expert i (gate[i], up[i], down[i]). bf16 [P, D].
// The weights stream in slices of equal work per thread across all experts, so no expert
// boundary costs a fork/join. On the AVX512 backend any number of rows per expert (a many-row
// serving step: 1800 token-expert pairs), with each row's sums in a fixed order whatever the
// expert's row count, so a row's output does not depend on the other rows; AMX up to 64 rows,
// the AVX512 loop alone up to 16. Requires small_m_moe_applies.
bool small_m_moe_applies(const torch::Tensor& x_PD, const std::vector<int64_t>& counts,
                         const std::vector<torch::Tensor>& gate, const std::vector<torch::Tensor>& up,
                         const std::vector<torch::Tensor>& down);
torch::Tensor small_m_moe(const torch::Tensor& x_PD, const std::vector<int64_t>& counts,
                          const std::vector<torch::Tensor>& gate, const std::vector<torch::Tensor>& up,
                          const std::vector<torch::Tensor>& down);

// The f32 twin of small_m_moe (f32 weights, up to 512 rows per expert, f32_linear_applies for
// every product): silu(x·gateᵀ) ⊙ (x·upᵀ) · downᵀ per expert, each product one parallel region
// over all experts. Per row bit-identical to swiglu() on that expert's rows alone.
bool f32_moe_applies(const torch::Tensor& x_PD, const std::vector<int64_t>& counts,
                     const std::vector<torch::Tensor>& gate, const std::vector<torch::Tensor>& up,
                     const std::vector<torch::Tensor>& down);
torch::Tensor f32_moe(const torch::Tensor& x_PD, const std::vector<int64_t>& counts,
                      const std::vector<torch::Tensor>& gate, const std::vector<torch::Tensor>& up,
                      const std::vector<torch::Tensor>& down);

// Drop-ins with torch's semantics (any leading dims, x's dtype out) that take the small-M path
// where it applies: linear without bias, and the SwiGLU MLP.
torch::Tensor linear(const torch::Tensor& x, const torch::Tensor& w);
torch::Tensor swiglu(const torch::Tensor& x, const torch::Tensor& gate, const torch::Tensor& up,
                     const torch::Tensor& down);

}  // namespace ecdlm::kernels
