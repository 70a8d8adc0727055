#include "ecdlm/kernels/softmax.h"

#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <limits>

#include "ecdlm/kernels/attention.h"
#include "ecdlm/kernels/avx512_reduce.h"

// GCC 12's AVX-512 intrinsics pass an undefined merge source: a false -Wuninitialized.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace ecdlm::kernels {
namespace {

__attribute__((target("avx512f"))) void greedy_row(const float* x, int64_t V, int64_t* token, double* prob) {
  __m512 mx = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  for (int64_t v = 0; v < V; v += 16) {
    const __mmask16 m = detail::tail_mask(V - v);
    mx = _mm512_mask_max_ps(mx, m, mx, _mm512_maskz_loadu_ps(m, x + v));
  }
  const float best = detail::hmax(mx);
  const __m512 b = _mm512_set1_ps(best);
  int64_t arg = -1;
  __m512 sum = _mm512_setzero_ps();
  for (int64_t v = 0; v < V; v += 16) {
    const __mmask16 m = detail::tail_mask(V - v);
    const __m512 xv = _mm512_maskz_loadu_ps(m, x + v);
    if (arg < 0) {
      const __mmask16 eq = _mm512_mask_cmp_ps_mask(m, xv, b, _CMP_EQ_OQ);
      if (eq) arg = v + __builtin_ctz(static_cast<unsigned>(eq));
    }
    sum = _mm512_add_ps(sum, _mm512_maskz_mov_ps(m, detail::exp_ps(_mm512_sub_ps(xv, b))));
  }
  const float s = detail::hsum_ordered(sum);
  *token = arg < 0 ? 0 : arg;  // no entry equals the max: NaN logits (torch's argmax would point at one)
  *prob = static_cast<double>(1.0F / s);
}

}  // namespace

bool greedy_prob_applies(const torch::Tensor& logits_NV) {
  return decode_attention_enabled() && logits_NV.defined() && logits_NV.dim() == 2 && logits_NV.size(1) >= 1 &&
         logits_NV.scalar_type() == torch::kFloat32 && logits_NV.is_contiguous() && logits_NV.device().is_cpu() &&
         !(torch::GradMode::is_enabled() && logits_NV.requires_grad());
}

void greedy_prob(const torch::Tensor& logits_NV, torch::Tensor& token_N, torch::Tensor& prob_N) {
  TORCH_CHECK(greedy_prob_applies(logits_NV), "greedy_prob: inputs the kernel does not take");
  const int64_t N = logits_NV.size(0), V = logits_NV.size(1);
  token_N = torch::empty({N}, torch::kInt64);
  prob_N = torch::empty({N}, torch::kFloat64);
  const float* x = logits_NV.data_ptr<float>();
  int64_t* tok = token_N.data_ptr<int64_t>();
  double* prob = prob_N.data_ptr<double>();
  // Rows are independent; about 8 rows of a 32k vocabulary make a task worth a thread.
  at::parallel_for(0, N, std::max<int64_t>(1, (int64_t{1} << 18) / V), [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) greedy_row(x + n * V, V, tok + n, prob + n);
  });
}

}  // namespace ecdlm::kernels
