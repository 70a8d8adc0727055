// AVX2 fallback for quantized weights: one weight row x up to 4 token rows, 32 inputs (one group or
// half of one) a step. maddubs multiplies u8 by s8 into saturating s16 pairs, madd sums the pairs
// into the same 4-input int32 lanes vpdpbusd makes, so the q4 bias of the vnni path carries over.
// q8 codes are signed, and 255 x 127 pairs would saturate: llama.cpp's sign trick multiplies
// |w| by sign(x, w) instead (at most 2 x 127 x 127 < 32767), with no offset to pay back.
#include <immintrin.h>

#include <algorithm>

#include "ecdlm/kernels/quant_backend.h"

namespace ecdlm::kernels::detail {
namespace {

#define ECDLM_AVX2_TARGET __attribute__((target("avx2,fma,f16c")))

constexpr int64_t kPrefetch = 16384;  // bytes, as the vnni kernel

ECDLM_AVX2_TARGET inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// acc[m] += (int32 lanes of wu · x_m over the 32 inputs at k, plus bias) · d_w · d_x[m, k / G].
template <int MC, bool Q8>
ECDLM_AVX2_TARGET inline void step(__m256 (&acc)[MC], __m256i wv, float dw, const QxOperand& x, int64_t m0,
                                   int64_t k) {
  const int64_t K = x.K, KG = K / x.G, g = k / x.G;
  const __m256i ones = _mm256_set1_epi16(1);
  const __m256i aw = Q8 ? _mm256_abs_epi8(wv) : wv;
#pragma GCC unroll 4
  for (int m = 0; m < MC; ++m) {
    const __m256i xq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.q + (m0 + m) * K + k));
    __m256i dot;
    if constexpr (Q8) {
      dot = _mm256_madd_epi16(_mm256_maddubs_epi16(aw, _mm256_sign_epi8(xq, wv)), ones);
    } else {
      dot = _mm256_madd_epi16(_mm256_maddubs_epi16(aw, xq), ones);
      dot = _mm256_add_epi32(dot, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.bias + (m0 + m) * (K / 4) + k / 4)));
    }
    acc[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(dw * x.d[(m0 + m) * KG + g]), acc[m]);
  }
}

template <int MC, bool PF>
ECDLM_AVX2_TARGET void row_tile(const QxOperand& x, int64_t m0, const QwOperand& w, int64_t n, float* y, int64_t ldy) {
  __m256 acc[MC];
#pragma GCC unroll 4
  for (int m = 0; m < MC; ++m) acc[m] = _mm256_setzero_ps();
  const int64_t K = w.K, G = w.G, KG = K / G;
  const uint8_t* row = w.q + n * w.row_bytes;
  const uint16_t* d = w.d + n * KG;
  if (w.kind == io::QuantKind::kQ8) {
    for (int64_t k = 0; k < K; k += 32) {  // K % 32 == 0 (G >= 32)
      if constexpr (PF) _mm_prefetch(reinterpret_cast<const char*>(row + k + kPrefetch), _MM_HINT_T1);
      const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + k));
      step<MC, true>(acc, wv, _cvtsh_ss(d[k / G]), x, m0, k);
    }
  } else {
    const __m256i low = _mm256_set1_epi8(0x0F);
    for (int64_t k = 0; k + io::kQ4Chunk <= K; k += io::kQ4Chunk) {
      if constexpr (PF) _mm_prefetch(reinterpret_cast<const char*>(row + k / 2 + kPrefetch), _MM_HINT_T1);
      for (int64_t h = 0; h < 2; ++h) {  // bytes 32h .. 32h + 31: inputs 32h + i (low), 64 + 32h + i (high)
        const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + k / 2 + 32 * h));
        const int64_t kl = k + 32 * h, kh = k + 64 + 32 * h;
        step<MC, false>(acc, _mm256_and_si256(v, low), _cvtsh_ss(d[kl / G]), x, m0, kl);
        step<MC, false>(acc, _mm256_and_si256(_mm256_srli_epi16(v, 4), low), _cvtsh_ss(d[kh / G]), x, m0, kh);
      }
    }
  }
  float out[MC];
#pragma GCC unroll 4
  for (int m = 0; m < MC; ++m) out[m] = hsum(acc[m]);
  if (w.m) {  // q4's minimum term over all groups
    const uint16_t* mn = w.m + n * KG;
    for (int m = 0; m < MC; ++m) {
      __m256 s = _mm256_setzero_ps();
      int64_t g = 0;
      for (; g + 8 <= KG; g += 8)
        s = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(mn + g))),
                            _mm256_loadu_ps(x.c + (m0 + m) * KG + g), s);
      out[m] += hsum(s);
      for (; g < KG; ++g) out[m] += _cvtsh_ss(mn[g]) * x.c[(m0 + m) * KG + g];
    }
  }
#pragma GCC unroll 4
  for (int m = 0; m < MC; ++m) y[m * ldy] = out[m];
}

template <bool PF>
void row_tile_m(int64_t mc, const QxOperand& x, int64_t m0, const QwOperand& w, int64_t n, float* y, int64_t ldy) {
  switch (mc) {
    case 1: return row_tile<1, PF>(x, m0, w, n, y, ldy);
    case 2: return row_tile<2, PF>(x, m0, w, n, y, ldy);
    case 3: return row_tile<3, PF>(x, m0, w, n, y, ldy);
    default: return row_tile<4, PF>(x, m0, w, n, y, ldy);
  }
}

}  // namespace

void avx2_rows(const QxOperand& x, const QwOperand& w, int64_t n0, int64_t n1, float* y, int64_t ldy) {
  constexpr int64_t kBlockN = 64;  // rows reread from L2 by the later 4-token chunks
  for (int64_t nb = n0; nb < n1; nb += kBlockN) {
    const int64_t ne = std::min(n1, nb + kBlockN);
    for (int64_t m0 = 0; m0 < x.M; m0 += 4) {
      const int64_t mc = std::min<int64_t>(4, x.M - m0);
      for (int64_t n = nb; n < ne; ++n) {
        if (m0 == 0)
          row_tile_m<true>(mc, x, m0, w, n, y + m0 * ldy + (n - n0), ldy);
        else
          row_tile_m<false>(mc, x, m0, w, n, y + m0 * ldy + (n - n0), ldy);
      }
    }
  }
  const int64_t k_tail = w.K - w.K % io::kQ4Chunk;
  if (w.kind != io::QuantKind::kQ8 && k_tail < w.K)
    for (int64_t n = n0; n < n1; ++n)
      for (int64_t m = 0; m < x.M; ++m) y[m * ldy + (n - n0)] += q4_tail(x, m, w, n, k_tail);
}

}  // namespace ecdlm::kernels::detail
