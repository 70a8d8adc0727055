// Attention of decoding steps in one parallel region: every row (a sequence's run of new query
// positions) attends to its own cached K/V followed by its own new K/V, read where they lie (no
// concatenation), with a visible-prefix rule per query (block-causal, causal and full attention
// all are "query n sees keys [0, visible[n])"), GQA, f32 or bf16 inputs, softmax in f32.
// Each query's output is computed alone in a fixed order (scores over head_dim, then the softmax
// sum and the value sum over keys in key order), so it does not depend on the other rows of the
// call, on how many rows there are, or on the cache length beyond what it sees: a row decoded
// alone and the same row inside a batch give the same bits. torch's path (cat, matmul, additive
// mask, softmax, matmul) stays the reference and the fallback. The decoders use the kernel for
// f32 and bf16 models: alone the two paths tie at LLaDA2.0-mini's bf16 shape (bench
// DecodeAttention), but inside a served step of 7 rows torch's per-row loop of ~15 ops took 4.4 ms
// a layer, and the kernel cut the step's attention part by a quarter (bench serve).
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <vector>

namespace ecdlm::kernels {

// One row of a call: its new queries/keys/values are rows [row0, row0 + len) of q/k/v, after a
// cache of P positions: k_HPd / v_HPd [Hkv, P, hd] (undefined when P == 0).
struct AttnRow {
  int64_t row0 = 0, len = 0;
  torch::Tensor k_HPd, v_HPd;
  int64_t cached() const { return k_HPd.defined() ? k_HPd.size(1) : 0; }
};

// Whether the decoders' attention kernel is on for this thread: inside a kernels::F32TilesScope
// (the decoders open it; training, eval and `logits` do not), with a backend other than torch
// (`--kernel torch` turns this off too) and a CPU with AVX512F/BW/VL.
bool decode_attention_enabled();

// Keys visible to the queries at positions [p0, p0 + L) under block-causal attention with the
// given block (<= 0: bidirectional over the p0 + L keys): visible[i] = min(p0 + L, (floor((p0 + i)
// / block) + 1) * block).
std::vector<int64_t> block_causal_visible(int64_t p0, int64_t L, int64_t block);
// The same read off an additive mask_LS [L, S] (0 = visible, -inf = hidden): true and visible[i]
// when every row is a run of zeros followed by -inf (at least one zero), false otherwise (any
// other mask keeps torch's path). An undefined mask is full attention (visible[i] = S).
bool visible_from_mask(const torch::Tensor& mask_LS, int64_t L, int64_t S, std::vector<int64_t>& visible);

// q_NHd [N, H, hd], k_NKd / v_NKd [N, Hkv, hd] (H a multiple of Hkv): one dtype, f32 or bf16,
// contiguous, CPU, no autograd. Row caches f32 or bf16 (both of one dtype), contiguous. visible
// [N]: keys query n sees, 1 <= visible[n] <= P + len of its row. Rows cover [0, N) exactly once.
bool decode_attention_applies(const torch::Tensor& q_NHd, const torch::Tensor& k_NKd, const torch::Tensor& v_NKd,
                              const std::vector<AttnRow>& rows, const std::vector<int64_t>& visible);
// out_NHd [N, H, hd] in q's dtype: softmax(q·kᵀ · scale over the visible keys) · v, per query
// head h with K/V head h / (H / Hkv). A cache of another dtype is first rounded to q's dtype (as
// torch's `.to()` does). Requires decode_attention_applies (throws c10::Error otherwise).
torch::Tensor decode_attention(const torch::Tensor& q_NHd, const torch::Tensor& k_NKd, const torch::Tensor& v_NKd,
                               const std::vector<AttnRow>& rows, const std::vector<int64_t>& visible, double scale);

}  // namespace ecdlm::kernels
