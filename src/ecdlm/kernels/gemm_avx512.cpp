// AVX512-BF16 backend: RT weight rows stream side by side against up to 4 token rows
// (vdpbf16ps, f32 accumulation). At a few token rows the product only streams the weights, so
// what matters is reaching memory bandwidth: a software prefetch 16 KB ahead in the weight's
// linear order runs across the 4 KB page boundaries where the hardware prefetchers stop.
#include <immintrin.h>

#include <algorithm>

#include "ecdlm/kernels/avx512_reduce.h"
#include "ecdlm/kernels/backend.h"

// GCC 12's _mm512_reduce_add_ps passes _mm256_undefined_pd() by design: a false -Wuninitialized.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace ecdlm::kernels::detail {
namespace {

#define ECDLM_BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

// Weight rows per cache block: 64 rows of K = 2048 bf16 are 256 KB, inside a 1-2 MB L2, so the
// second and later 4-row chunks of x re-read them from L2, not memory.
constexpr int64_t kBlockN = 64;

// Prefetch distance in bf16 elements of the weight (16 KB). Measured on LLaDA2 expert shapes
// (Xeon, AVX512-BF16; one thread, 4 token rows): 11.0 -> 14.6 GB/s at K = 2048 against the same
// row 1 KB ahead, 10.6 -> 11.9 GB/s at K = 512; the L2 hint beats L1 at K = 512.
constexpr int64_t kPrefetch = 8192;

// acc[r][m] += x[m, k:k+32] · w[r, k:k+32] over all k; y[m * ldy + r] = the sums. MC x rows
// stay in L1. PF: prefetch ahead (the first pass over a block; later passes hit L2).
// The accumulators must stay in registers: the unroll pragmas make the loops vanish at -O2 too.
template <int MC, int RT, bool PF>
ECDLM_BF16_TARGET void dot_tile(const uint16_t* x, const uint16_t* w, int64_t K, float* y, int64_t ldy) {
  __m512 acc[RT][MC];
#pragma GCC unroll 8
  for (int r = 0; r < RT; ++r)
#pragma GCC unroll 8
    for (int m = 0; m < MC; ++m) acc[r][m] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 32 <= K; k += 32) {
    __m512bh w_v[RT];
#pragma GCC unroll 8
    for (int r = 0; r < RT; ++r) {
      w_v[r] = (__m512bh)_mm512_loadu_si512(w + r * K + k);
      if constexpr (PF) _mm_prefetch(reinterpret_cast<const char*>(w + r * K + k + kPrefetch), _MM_HINT_T1);
    }
#pragma GCC unroll 8
    for (int m = 0; m < MC; ++m) {
      const auto x_v = (__m512bh)_mm512_loadu_si512(x + m * K + k);
#pragma GCC unroll 8
      for (int r = 0; r < RT; ++r) acc[r][m] = _mm512_dpbf16_ps(acc[r][m], x_v, w_v[r]);
    }
  }
  if (k < K) {  // masked tail: lanes past K load as zero
    const auto mask = static_cast<__mmask32>((1ULL << (K - k)) - 1);
    __m512bh w_v[RT];
#pragma GCC unroll 8
    for (int r = 0; r < RT; ++r) w_v[r] = (__m512bh)_mm512_maskz_loadu_epi16(mask, w + r * K + k);
#pragma GCC unroll 8
    for (int m = 0; m < MC; ++m) {
      const auto x_v = (__m512bh)_mm512_maskz_loadu_epi16(mask, x + m * K + k);
#pragma GCC unroll 8
      for (int r = 0; r < RT; ++r) acc[r][m] = _mm512_dpbf16_ps(acc[r][m], x_v, w_v[r]);
    }
  }
  if constexpr (RT == 4) {
#pragma GCC unroll 8
    for (int m = 0; m < MC; ++m) reduce4(acc[0][m], acc[1][m], acc[2][m], acc[3][m], y + m * ldy);
  } else {
#pragma GCC unroll 8
    for (int m = 0; m < MC; ++m)
#pragma GCC unroll 8
      for (int r = 0; r < RT; ++r) y[m * ldy + r] = _mm512_reduce_add_ps(acc[r][m]);
  }
}

template <int RT, bool PF>
void dot_tile_m(int64_t mc, const uint16_t* x, const uint16_t* w, int64_t K, float* y, int64_t ldy) {
  switch (mc) {
    case 1: return dot_tile<1, RT, PF>(x, w, K, y, ldy);
    case 2: return dot_tile<2, RT, PF>(x, w, K, y, ldy);
    case 3: return dot_tile<3, RT, PF>(x, w, K, y, ldy);
    case 4: return dot_tile<4, RT, PF>(x, w, K, y, ldy);
    case 5: return dot_tile<5, RT, PF>(x, w, K, y, ldy);
    default: return dot_tile<6, RT, PF>(x, w, K, y, ldy);
  }
}

template <bool PF>
void block_rows(const uint16_t* x, int64_t m0, int64_t mc, int64_t K, const uint16_t* w, int64_t nb, int64_t ne,
                int64_t n0, float* y, int64_t ldy) {
  int64_t n = nb;
  for (; n + 4 <= ne; n += 4) dot_tile_m<4, PF>(mc, x + m0 * K, w + n * K, K, y + m0 * ldy + (n - n0), ldy);
  for (; n < ne; ++n) dot_tile_m<1, PF>(mc, x + m0 * K, w + n * K, K, y + m0 * ldy + (n - n0), ldy);
}

// The f32 twin of dot_tile (the router: f32 weights, few token rows), 16 lanes a step.
template <int MC, int RT>
__attribute__((target("avx512f"))) void dot_tile_f32(const float* x, const float* w, int64_t K, float* y,
                                                     int64_t ldy) {
  __m512 acc[RT][MC];
#pragma GCC unroll 4
  for (int r = 0; r < RT; ++r)
#pragma GCC unroll 4
    for (int m = 0; m < MC; ++m) acc[r][m] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; k += 16) {
    const auto mask = static_cast<__mmask16>(K - k >= 16 ? 0xFFFF : (1U << (K - k)) - 1);
    __m512 w_v[RT];
#pragma GCC unroll 4
    for (int r = 0; r < RT; ++r) w_v[r] = _mm512_maskz_loadu_ps(mask, w + r * K + k);
#pragma GCC unroll 4
    for (int m = 0; m < MC; ++m) {
      const __m512 x_v = _mm512_maskz_loadu_ps(mask, x + m * K + k);
#pragma GCC unroll 4
      for (int r = 0; r < RT; ++r) acc[r][m] = _mm512_fmadd_ps(x_v, w_v[r], acc[r][m]);
    }
  }
  if constexpr (RT == 4) {
#pragma GCC unroll 4
    for (int m = 0; m < MC; ++m) reduce4(acc[0][m], acc[1][m], acc[2][m], acc[3][m], y + m * ldy);
  } else {
#pragma GCC unroll 4
    for (int m = 0; m < MC; ++m) y[m * ldy] = _mm512_reduce_add_ps(acc[0][m]);
  }
}

template <int RT>
void dot_tile_f32_m(int64_t mc, const float* x, const float* w, int64_t K, float* y, int64_t ldy) {
  switch (mc) {
    case 1: return dot_tile_f32<1, RT>(x, w, K, y, ldy);
    case 2: return dot_tile_f32<2, RT>(x, w, K, y, ldy);
    case 3: return dot_tile_f32<3, RT>(x, w, K, y, ldy);
    default: return dot_tile_f32<4, RT>(x, w, K, y, ldy);
  }
}

}  // namespace

void avx512_rows(const uint16_t* x, int64_t M, int64_t K, const uint16_t* w, int64_t n0, int64_t n1, float* y,
                 int64_t ldy) {
  // Above 16 rows the weights are re-read from L2 for every chunk of token rows, so chunks of 6
  // (24 accumulators, 4 + 6 loads per 24 dot products) beat 4. A row's sums do not depend on
  // its chunk: every accumulator runs over k in the same order, and reduce4 sums each alone.
  const int64_t chunk = M > 16 ? 6 : 4;
  for (int64_t nb = n0; nb < n1; nb += kBlockN) {
    const int64_t ne = std::min(n1, nb + kBlockN);
    for (int64_t m0 = 0; m0 < M; m0 += chunk) {
      const int64_t mc = std::min<int64_t>(chunk, M - m0);
      if (m0 == 0)
        block_rows<true>(x, m0, mc, K, w, nb, ne, n0, y, ldy);
      else
        block_rows<false>(x, m0, mc, K, w, nb, ne, n0, y, ldy);
    }
  }
}

void avx512_rows_f32(const float* x, int64_t M, int64_t K, const float* w, int64_t n0, int64_t n1, float* y,
                     int64_t ldy) {
  // Blocks of 32 rows (256 KB at K = 2048) stay in L2 across the passes over the token rows.
  for (int64_t nb = n0; nb < n1; nb += kBlockN / 2) {
    const int64_t ne = std::min(n1, nb + kBlockN / 2);
    for (int64_t m0 = 0; m0 < M; m0 += 4) {
      const int64_t mc = std::min<int64_t>(4, M - m0);
      float* yb = y + m0 * ldy + (nb - n0);
      int64_t n = nb;
      for (; n + 4 <= ne; n += 4) dot_tile_f32_m<4>(mc, x + m0 * K, w + n * K, K, yb + (n - nb), ldy);
      for (; n < ne; ++n) dot_tile_f32_m<1>(mc, x + m0 * K, w + n * K, K, yb + (n - nb), ldy);
    }
  }
}

}  // namespace ecdlm::kernels::detail

namespace ecdlm::kernels::detail {
namespace {

// Round to bf16, nearest-even (NaN stays NaN), as c10::BFloat16 does for normal numbers.
ECDLM_BF16_TARGET inline __m256i to_bf16_ps(__m512 v) { return (__m256i)_mm512_cvtneps_pbh(v); }

}  // namespace

ECDLM_BF16_TARGET void avx512_silu_mul_bf16(const float* g, const float* u, int64_t n, uint16_t* h) {
  for (int64_t i = 0; i < n; i += 16) {
    const auto mask = static_cast<__mmask16>(n - i >= 16 ? 0xFFFF : (1U << (n - i)) - 1);
    const __m512 gv = _mm512_maskz_loadu_ps(mask, g + i), uv = _mm512_maskz_loadu_ps(mask, u + i);
    const __m512 s = _mm512_div_ps(gv, _mm512_add_ps(_mm512_set1_ps(1.0F), exp_ps(_mm512_sub_ps(_mm512_setzero_ps(), gv))));
    _mm256_mask_storeu_epi16(h + i, mask, to_bf16_ps(_mm512_mul_ps(s, uv)));
  }
}

ECDLM_BF16_TARGET void avx512_round_bf16(const float* y, int64_t n, uint16_t* out) {
  for (int64_t i = 0; i < n; i += 16) {
    const auto mask = static_cast<__mmask16>(n - i >= 16 ? 0xFFFF : (1U << (n - i)) - 1);
    _mm256_mask_storeu_epi16(out + i, mask, to_bf16_ps(_mm512_maskz_loadu_ps(mask, y + i)));
  }
}

ECDLM_BF16_TARGET void avx512_scatter_pairs(const uint16_t* src, uint16_t* dst, int64_t stride) {
  const __m512i idx = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                         _mm512_set1_epi32(static_cast<int>(stride / 2)));
  const __m512i v = src ? _mm512_loadu_si512(src) : _mm512_setzero_si512();
  _mm512_i32scatter_epi32(dst, idx, v, 4);
}

}  // namespace ecdlm::kernels::detail
