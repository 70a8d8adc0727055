// Products with quantized weights (io/quant_format.h): y_MN = x_MK · deq(w_NK)ᵀ, f32 out. Decoding
// streams weights at memory speed, so fewer weight bytes are the speed-up; the kernels keep the
// arithmetic per weight byte low enough to stay memory-bound at a few token rows:
//   vnni    AVX512-VNNI vpdpbusd, 4 weight rows x 4 token rows. x is quantized per row and group to
//           int8 (llama.cpp's q8_0 activations). vpdpbusd multiplies u8 by s8, so the weight is the
//           unsigned operand (q8 codes + 128, q4 codes as they are) and the offset is paid back
//           exactly in the int32 accumulator's initial value: -Z · (sum of each lane's 4 x codes),
//           precomputed once per call per token row (Z = 128 for q8, 8 for q4s). q4's minimum
//           adds Σ_g m[n,g] · d_x[m,g] · Σ q_x over the group, a K/G-long dot product per output.
//           From kLaneMinRows (16) token rows on (kPackedLaneMinRows, 64, on the repacked
//           copies, quant_repack.h), vnni runs the token-lane kernel instead
//           (quant_lanes.cpp): 16 tokens per vector, a weight's 4 codes broadcast, int32 sums over
//           a whole group, so the scales cost 3 instructions per group instead of 3 per vpdpbusd.
//   avx2    AVX2 maddubs (u8 x s8 -> s16 pairs): q8 with llama.cpp's sign trick (|w| x sign(x, w),
//           no s16 saturation), q4 as vnni. 1 weight row x 4 token rows. The fallback.
//   bf16    AVX512-BF16: 32 weight rows dequantized to bf16 into an L2 tile, then the bf16 small-M
//           kernel's vdpbf16ps 4 x 4 tiles over all token rows (x exact in bf16). Opt-in: measured
//           no faster than vnni at 32 rows, slower at fewer (BM_QuantLinear).
//   torch   dequantize 64-row tiles to bf16 and multiply with torch's GEMM: the reference-grade
//           path (x exact), and the many-row (prefill) path whatever the choice, except on
//           repacked weights (quant_repack.h), where vnni's token-lane kernel takes every M.
//   amx     vnni, with the products of kPackedAmxMinRows (9) or more token rows on the repacked
//           copies run on AMX-INT8 tiles (quant_amx.cpp): one tdpbsud per 16 tokens x 16 weight
//           rows x group, the copy read in place as the B operand; the same bits as vnni.
// `auto` picks amx on a CPU with AMX-INT8, else vnni, else avx2, else torch, up to
// quant_max_rows() token rows (more rows take
// torch, or the token-lane kernel on repacked weights); bf16 runs only when chosen (every M).
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

#include "ecdlm/io/quant_format.h"

namespace ecdlm::kernels {

enum class QuantKernel { kAuto, kVnni, kAvx2, kTorch, kBf16, kAmx };
// The VNNI kernels run (kAmx is vnni with AMX-INT8 tiles for its many-row products).
inline bool is_vnni(QuantKernel k) { return k == QuantKernel::kVnni || k == QuantKernel::kAmx; }

// --quant-kernel NAME (auto | amx | vnni | avx2 | bf16 | torch). A forced path this CPU lacks is a UserError.
QuantKernel parse_quant_kernel(const std::string& name, const std::string& flag);
const char* quant_kernel_name(QuantKernel k);
void set_quant_kernel(QuantKernel k);  // process-wide choice, default kAuto
QuantKernel quant_kernel_choice();
QuantKernel quant_kernel_backend();  // the choice resolved on this CPU (kAmx, kVnni, kAvx2 or kTorch)
bool cpu_has_avx512_vnni();          // AVX512F, BW, VL and VNNI
bool cpu_has_amx_int8();             // AMX-TILE + AMX-INT8 with tile data granted (and VNNI)
bool cpu_has_avx2();                 // AVX2, FMA and F16C
// Token rows up to which the int8 kernels run (0 for torch).
int64_t quant_max_rows();

// Activations quantized per row and group of G: x ≈ d_x[m, k / G] · q_x[m, k], q_x in [-127, 127],
// d_x = max|x| / 127 over the group (f32), round to nearest even. x_MK f32 or bf16.
struct QuantizedX {
  torch::Tensor q_MK;  // int8 [M, K]
  torch::Tensor d_MG;  // f32 [M, K / G]
};
QuantizedX quantize_activations(const torch::Tensor& x_MK, int64_t G);

// x_MK: f32 or bf16 [M, K], CPU; w: [N, K]. y_MN f32 [M, N]. The choice's kernel when M <=
// quant_max_rows(), else torch's tiles; `k` forces a path for any M (tests, benchmarks). Throws
// UserError on a shape or dtype mismatch, or a forced path this CPU lacks.
torch::Tensor quant_linear(const torch::Tensor& x_MK, const io::QuantWeight& w);
torch::Tensor quant_linear(const torch::Tensor& x_MK, const io::QuantWeight& w, QuantKernel k);
// f64 references: x exact (quantize_x false) or x quantized as the int8 kernels do (true).
torch::Tensor quant_linear_reference(const torch::Tensor& x_MK, const io::QuantWeight& w, bool quantize_x);

// Routed experts' packed matrices, one entry per expert: gate / up [F, D], down [D, F].
struct QuantExperts {
  std::vector<const io::QuantWeight*> gate, up, down;
};

// Many SwiGLU experts (silu(x·gateᵀ) ⊙ (x·upᵀ)) · downᵀ in one parallel region (a MoE layer of a
// cached step): x_PD (f32 or bf16) holds counts[i] rows for expert i, one expert after another.
// Activations are quantized once per row (x for gate and up; h, kept f32 until then, for down), and
// the work units are (expert, 64 weight rows) over all experts, so no expert boundary costs a
// fork/join. Out [P, D] in `out` (f32 or bf16). Runs the int8 kernels (vnni / avx2: `k`, or the
// choice) when no count exceeds quant_max_rows(), else expert by expert through quant_linear.
// Throws UserError on mismatched lengths, shapes or formats (gate and up alike, every expert alike).
torch::Tensor quant_moe(const torch::Tensor& x_PD, const std::vector<int64_t>& counts, const QuantExperts& ex,
                        torch::ScalarType out, QuantKernel k = QuantKernel::kAuto);
// One SwiGLU MLP (an expert, a shared expert, a dense MLP) through quant_moe: x_MD [M, D].
torch::Tensor quant_swiglu(const torch::Tensor& x_MD, const io::QuantWeight& gate, const io::QuantWeight& up,
                           const io::QuantWeight& down, torch::ScalarType out = torch::kBFloat16);

}  // namespace ecdlm::kernels
