// AVX512-VNNI backend for quantized weights: 4 weight rows x 4 token rows, one vpdpbusd per row
// pair and 64 inputs. Per 64 inputs and (row, token) the work is vpdpbusd, a conversion, a multiply
// of the two scale vectors and an FMA; the weight side (load, unpack, scale expansion) is shared
// by the 4 tokens. Groups of 32 put two groups in one vector (lanes 0-7 and 8-15), groups of 64 one.
#include <immintrin.h>

#include <algorithm>

#include "ecdlm/kernels/avx512_reduce.h"
#include "ecdlm/kernels/quant_backend.h"

// GCC 12's _mm512_reduce_add_ps passes _mm256_undefined_pd() by design: a false -Wuninitialized.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace ecdlm::kernels::detail {
namespace {

#define ECDLM_VNNI_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,f16c")))

// Weight rows per cache block: their bytes (64 KB at K = 2048 in q8) stay in L2 for the second and
// later 4-token chunks.
constexpr int64_t kBlockN = 64;
// Prefetch distance in weight bytes, as the bf16 kernel's 16 KB (gemm_avx512.cpp): it runs ahead
// across the 4 KB pages where the hardware prefetchers stop.
constexpr int64_t kPrefetch = 16384;

// Per-lane weight scales of the 64 inputs from group g on (f16 scales of one row): G = 64 one
// group, G = 32 groups g (lanes 0-7) and g + 1 (lanes 8-15; zero when `two` is false, a K tail).
ECDLM_VNNI_TARGET inline __m512 lane_scales(const uint16_t* d, int64_t g, int64_t G, bool two) {
  if (G == 64) return _mm512_set1_ps(_cvtsh_ss(d[g]));
  const __m128 f = _mm_cvtph_ps(_mm_maskz_loadu_epi16(two ? 3 : 1, d + g));
  return _mm512_permutexvar_ps(_mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0),
                               _mm512_castps128_ps512(f));
}

// The per-lane weight scales of RT rows, 16 groups' f16 scales converted once per row and reused by
// the next 8 (G = 32) or 16 (G = 64) chunks through one permute each: a chunk's scales cost one
// instruction per row instead of a load, a conversion and a permute. Steps must visit every group
// from 0 on (k = 0, then k += 64).
template <int RT>
struct RowScales {
  __m512 sc[RT];
  ECDLM_VNNI_TARGET inline void at(const QwOperand& w, int64_t n, int64_t k, __m512 (&sw)[RT]) {
    const int64_t G = w.G, KG = w.K / G, g = k / G, j = g & 15;
    if (j == 0) {
      const auto mask = static_cast<__mmask16>(KG - g >= 16 ? 0xFFFF : (1U << (KG - g)) - 1);
#pragma GCC unroll 4
      for (int r = 0; r < RT; ++r) sc[r] = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, w.d + (n + r) * KG + g));
    }
    const int jj = static_cast<int>(j);
    const __m512i idx = G == 64 ? _mm512_set1_epi32(jj)
                                : _mm512_set_epi32(jj + 1, jj + 1, jj + 1, jj + 1, jj + 1, jj + 1, jj + 1, jj + 1, jj,
                                                   jj, jj, jj, jj, jj, jj, jj);
#pragma GCC unroll 4
    for (int r = 0; r < RT; ++r) sw[r] = _mm512_permutexvar_ps(idx, sc[r]);
  }
};

// acc[r][m] += Σ_lanes (bias + wu[r] · x_m) · sw[r] · s_m over the 64 inputs at k (Tail: the
// first 32 only).
template <int MC, int RT, bool Tail>
ECDLM_VNNI_TARGET inline void step(__m512 (&acc)[RT][MC], const __m512i (&wu)[RT], const __m512 (&sw)[RT],
                                   const QxOperand& x, int64_t m0, int64_t k) {
  const int64_t K = x.K;
#pragma GCC unroll 4
  for (int m = 0; m < MC; ++m) {
    const int8_t* xq = x.q + (m0 + m) * K + k;
    const int32_t* xb = x.bias + (m0 + m) * (K / 4) + k / 4;
    const float* xs = x.s + (m0 + m) * (K / 4) + k / 4;
    __m512i q, b;
    __m512 s;
    if constexpr (Tail) {
      q = _mm512_maskz_loadu_epi8(0xFFFFFFFFULL, xq);
      b = _mm512_maskz_loadu_epi32(0xFF, xb);
      s = _mm512_maskz_loadu_ps(0xFF, xs);
    } else {
      q = _mm512_loadu_si512(xq);
      b = _mm512_loadu_si512(xb);
      s = _mm512_loadu_ps(xs);
    }
#pragma GCC unroll 4
    for (int r = 0; r < RT; ++r) {
      const __m512i dot = _mm512_dpbusd_epi32(b, wu[r], q);
      acc[r][m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(sw[r], s), acc[r][m]);
    }
  }
}

// q4's minimum term Σ_g m[n, g] · c[m, g], added into the lanes of acc; then the sums to y.
template <int MC, int RT>
ECDLM_VNNI_TARGET inline void finish(__m512 (&acc)[RT][MC], const QxOperand& x, int64_t m0, const QwOperand& w,
                                     int64_t n, float* y, int64_t ldy) {
  const int64_t KG = x.K / x.G;
  if (w.m) {
    for (int64_t g = 0; g < KG; g += 16) {
      const auto mask = static_cast<__mmask16>(KG - g >= 16 ? 0xFFFF : (1U << (KG - g)) - 1);
#pragma GCC unroll 4
      for (int r = 0; r < RT; ++r) {
        const __m512 mv = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, w.m + (n + r) * KG + g));
#pragma GCC unroll 4
        for (int m = 0; m < MC; ++m)
          acc[r][m] = _mm512_fmadd_ps(mv, _mm512_maskz_loadu_ps(mask, x.c + (m0 + m) * KG + g), acc[r][m]);
      }
    }
  }
  if constexpr (RT == 4) {
#pragma GCC unroll 4
    for (int m = 0; m < MC; ++m) reduce4(acc[0][m], acc[1][m], acc[2][m], acc[3][m], y + m * ldy);
  } else {
#pragma GCC unroll 4
    for (int m = 0; m < MC; ++m)
#pragma GCC unroll 4
      for (int r = 0; r < RT; ++r) y[m * ldy + r] = _mm512_reduce_add_ps(acc[r][m]);
  }
}

// Rows n .. n + RT - 1 against tokens m0 .. m0 + MC - 1 of a q8 weight. K % 64 is 0 or 32.
template <int MC, int RT, bool PF>
ECDLM_VNNI_TARGET void tile_q8(const QxOperand& x, int64_t m0, const QwOperand& w, int64_t n, float* y, int64_t ldy) {
  __m512 acc[RT][MC];
#pragma GCC unroll 4
  for (int r = 0; r < RT; ++r)
#pragma GCC unroll 4
    for (int m = 0; m < MC; ++m) acc[r][m] = _mm512_setzero_ps();
  const int64_t K = w.K, G = w.G, KG = K / G;
  const __m512i offset = _mm512_set1_epi8(static_cast<char>(0x80));
  __m512i wu[RT];
  __m512 sw[RT];
  RowScales<RT> scales;
  int64_t k = 0;
  for (; k + 64 <= K; k += 64) {
#pragma GCC unroll 4
    for (int r = 0; r < RT; ++r) {
      const uint8_t* row = w.q + (n + r) * w.row_bytes;
      wu[r] = _mm512_xor_si512(_mm512_loadu_si512(row + k), offset);  // q + 128 as u8
      if constexpr (PF) _mm_prefetch(reinterpret_cast<const char*>(row + k + kPrefetch), _MM_HINT_T1);
    }
    scales.at(w, n, k, sw);
    step<MC, RT, false>(acc, wu, sw, x, m0, k);
  }
  if (k < K) {  // 32 inputs left (G = 32): masked lanes see x = 0 and bias 0, so their dot is 0
#pragma GCC unroll 4
    for (int r = 0; r < RT; ++r) {
      wu[r] = _mm512_xor_si512(_mm512_maskz_loadu_epi8(0xFFFFFFFFULL, w.q + (n + r) * w.row_bytes + k), offset);
      sw[r] = lane_scales(w.d + (n + r) * KG, k / G, G, false);
    }
    step<MC, RT, true>(acc, wu, sw, x, m0, k);
  }
  finish<MC, RT>(acc, x, m0, w, n, y, ldy);
}

// The same for q4 / q4s: each 128-input chunk is one 64-byte load, unpacked into its low nibbles
// (inputs 0-63) and high nibbles (64-127). A K % 128 tail is left to q4_tail.
template <int MC, int RT, bool PF>
ECDLM_VNNI_TARGET void tile_q4(const QxOperand& x, int64_t m0, const QwOperand& w, int64_t n, float* y, int64_t ldy) {
  __m512 acc[RT][MC];
#pragma GCC unroll 4
  for (int r = 0; r < RT; ++r)
#pragma GCC unroll 4
    for (int m = 0; m < MC; ++m) acc[r][m] = _mm512_setzero_ps();
  const int64_t K = w.K;
  const __m512i low = _mm512_set1_epi8(0x0F);
  __m512i wu[RT];
  __m512 sw[RT];
  RowScales<RT> scales;
  for (int64_t k = 0; k + io::kQ4Chunk <= K; k += io::kQ4Chunk) {
#pragma GCC unroll 4
    for (int r = 0; r < RT; ++r) {
      const uint8_t* row = w.q + (n + r) * w.row_bytes;
      wu[r] = _mm512_and_si512(_mm512_loadu_si512(row + k / 2), low);
      if constexpr (PF) _mm_prefetch(reinterpret_cast<const char*>(row + k / 2 + kPrefetch), _MM_HINT_T1);
    }
    scales.at(w, n, k, sw);
    step<MC, RT, false>(acc, wu, sw, x, m0, k);
#pragma GCC unroll 4
    for (int r = 0; r < RT; ++r)  // reloaded from L1: keeps the 64-byte vector out of registers
      wu[r] = _mm512_and_si512(_mm512_srli_epi16(_mm512_loadu_si512(w.q + (n + r) * w.row_bytes + k / 2), 4), low);
    scales.at(w, n, k + 64, sw);
    step<MC, RT, false>(acc, wu, sw, x, m0, k + 64);
  }
  finish<MC, RT>(acc, x, m0, w, n, y, ldy);
}

template <int RT, bool PF>
void tile(int64_t mc, const QxOperand& x, int64_t m0, const QwOperand& w, int64_t n, float* y, int64_t ldy) {
  const bool q8 = w.kind == io::QuantKind::kQ8;
  switch (mc) {
    case 1: return q8 ? tile_q8<1, RT, PF>(x, m0, w, n, y, ldy) : tile_q4<1, RT, PF>(x, m0, w, n, y, ldy);
    case 2: return q8 ? tile_q8<2, RT, PF>(x, m0, w, n, y, ldy) : tile_q4<2, RT, PF>(x, m0, w, n, y, ldy);
    case 3: return q8 ? tile_q8<3, RT, PF>(x, m0, w, n, y, ldy) : tile_q4<3, RT, PF>(x, m0, w, n, y, ldy);
    default: return q8 ? tile_q8<4, RT, PF>(x, m0, w, n, y, ldy) : tile_q4<4, RT, PF>(x, m0, w, n, y, ldy);
  }
}

template <bool PF>
void block(const QxOperand& x, int64_t m0, int64_t mc, const QwOperand& w, int64_t nb, int64_t ne, int64_t n0,
           float* y, int64_t ldy) {
  int64_t n = nb;
  for (; n + 4 <= ne; n += 4) tile<4, PF>(mc, x, m0, w, n, y + m0 * ldy + (n - n0), ldy);
  for (; n < ne; ++n) tile<1, PF>(mc, x, m0, w, n, y + m0 * ldy + (n - n0), ldy);
}

}  // namespace

void vnni_rows(const QxOperand& x, const QwOperand& w, int64_t n0, int64_t n1, float* y, int64_t ldy) {
  if (w.packed) return vnni_packed_rows(x, *w.packed, w, n0, n1, y, ldy);
  for (int64_t nb = n0; nb < n1; nb += kBlockN) {
    const int64_t ne = std::min(n1, nb + kBlockN);
    for (int64_t m0 = 0; m0 < x.M; m0 += 4) {
      const int64_t mc = std::min<int64_t>(4, x.M - m0);
      if (m0 == 0)
        block<true>(x, m0, mc, w, nb, ne, n0, y, ldy);
      else
        block<false>(x, m0, mc, w, nb, ne, n0, y, ldy);
    }
  }
  const int64_t k_tail = w.K - w.K % io::kQ4Chunk;
  if (w.kind != io::QuantKind::kQ8 && k_tail < w.K)
    for (int64_t n = n0; n < n1; ++n)
      for (int64_t m = 0; m < x.M; ++m) y[m * ldy + (n - n0)] += q4_tail(x, m, w, n, k_tail);
}

}  // namespace ecdlm::kernels::detail

// --- Activation helpers (AVX512F/BW; every VNNI CPU has them) -------------------------------
namespace ecdlm::kernels::detail {

ECDLM_VNNI_TARGET void avx512_quantize_row(const float* v, int64_t n, const QxStore& x, int64_t m, int64_t k0,
                                           int32_t z) {
  const int64_t K = x.K, G = x.G;
  const __m512 lo = _mm512_set1_ps(-127.0F), hi = _mm512_set1_ps(127.0F);
  const __m128i ones8 = _mm_set1_epi8(1), ones16 = _mm_set1_epi16(1), negz = _mm_set1_epi32(-z);
  for (int64_t g0 = 0; g0 < n; g0 += G) {
    __m512 amax = _mm512_setzero_ps();
    for (int64_t i = 0; i < G; i += 16) amax = _mm512_max_ps(amax, _mm512_abs_ps(_mm512_loadu_ps(v + g0 + i)));
    const float a = _mm512_reduce_max_ps(amax);
    const float dg = a / 127.0F, inv = a > 0 ? 127.0F / a : 0.0F;
    const __m512 vinv = _mm512_set1_ps(inv);
    const int64_t k = k0 + g0;
    int8_t* q = x.q + m * K + k;
    __m128i sum4 = _mm_setzero_si128();
    for (int64_t i = 0; i < G; i += 16) {
      __m512 t = _mm512_roundscale_ps(_mm512_mul_ps(_mm512_loadu_ps(v + g0 + i), vinv),
                                      _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      const __m128i codes = _mm512_cvtepi32_epi8(_mm512_cvttps_epi32(_mm512_min_ps(_mm512_max_ps(t, lo), hi)));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(q + i), codes);
      // The 4 lanes' code sums: u8 ones x s8 codes into s16 pairs, then pairs into s32 quads.
      const __m128i quads = _mm_madd_epi16(_mm_maddubs_epi16(ones8, codes), ones16);
      sum4 = _mm_add_epi32(sum4, quads);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(x.bias + (m * K + k + i) / 4), _mm_mullo_epi32(quads, negz));
      _mm_storeu_ps(x.s + (m * K + k + i) / 4, _mm_set1_ps(dg));
    }
    sum4 = _mm_add_epi32(sum4, _mm_shuffle_epi32(sum4, 0x4E));
    sum4 = _mm_add_epi32(sum4, _mm_shuffle_epi32(sum4, 0xB1));
    x.d[(m * K + k) / G] = dg;
    const int32_t sum = _mm_cvtsi128_si32(sum4);
    x.c[(m * K + k) / G] = dg * static_cast<float>(sum);
    x.gb[(m * K + k) / G] = -z * sum;
  }
}

ECDLM_VNNI_TARGET void avx512_silu_mul(float* g, const float* u, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) {
    const auto mask = static_cast<__mmask16>(n - i >= 16 ? 0xFFFF : (1U << (n - i)) - 1);
    const __m512 gv = _mm512_maskz_loadu_ps(mask, g + i), uv = _mm512_maskz_loadu_ps(mask, u + i);
    const __m512 s = _mm512_div_ps(gv, _mm512_add_ps(_mm512_set1_ps(1.0F), exp_ps(_mm512_sub_ps(_mm512_setzero_ps(), gv))));
    _mm512_mask_storeu_ps(g + i, mask, _mm512_mul_ps(s, uv));
  }
}

ECDLM_VNNI_TARGET void avx512_round_bf16_f(const float* y, int64_t n, uint16_t* out) {
  const __m512i one = _mm512_set1_epi32(1), bias = _mm512_set1_epi32(0x7FFF), qnan = _mm512_set1_epi32(0x7FC0);
  for (int64_t i = 0; i < n; i += 16) {
    const auto mask = static_cast<__mmask16>(n - i >= 16 ? 0xFFFF : (1U << (n - i)) - 1);
    const __m512 v = _mm512_maskz_loadu_ps(mask, y + i);
    const __m512i b = _mm512_castps_si512(v);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(b, 16), one);
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(b, _mm512_add_epi32(lsb, bias)), 16);
    r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), qnan);
    _mm256_mask_storeu_epi16(out + i, mask, _mm512_cvtepi32_epi16(r));
  }
}

}  // namespace ecdlm::kernels::detail

// --- Dequantized bf16 rows (AVX512-BF16): the many-token-row path ------------------------------
namespace ecdlm::kernels::detail {

#define ECDLM_DEQ_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,f16c")))

namespace {

// 16 values (codes - z) · d + m to bf16 at out (multiply, then add: io::dequantize_rows' order).
ECDLM_DEQ_TARGET inline void put16(__m512i codes, float z, float d, float m, uint16_t* out) {
  const __m512 v = _mm512_sub_ps(_mm512_cvtepi32_ps(codes), _mm512_set1_ps(z));
  const __m512 y = _mm512_add_ps(_mm512_mul_ps(v, _mm512_set1_ps(d)), _mm512_set1_ps(m));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), (__m256i)_mm512_cvtneps_pbh(y));
}

// Group g's scale and minimum (0 without mins) from f16.
ECDLM_DEQ_TARGET inline void group_dm(const uint16_t* dp, const uint16_t* mp, int64_t g, float* d, float* m) {
  *d = _cvtsh_ss(dp[g]);
  *m = mp ? _cvtsh_ss(mp[g]) : 0.0F;
}

}  // namespace

ECDLM_DEQ_TARGET void avx512_dequant_row_bf16(const QwOperand& w, int64_t n, uint16_t* out) {
  const int64_t K = w.K, G = w.G, KG = K / G;
  const uint8_t* row = w.q + n * w.row_bytes;
  const uint16_t* dp = w.d + n * KG;
  const uint16_t* mp = w.m ? w.m + n * KG : nullptr;
  float d, m;
  if (w.kind == io::QuantKind::kQ8) {
    for (int64_t k = 0; k < K; k += 16) {
      group_dm(dp, mp, k / G, &d, &m);
      put16(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + k))), 0.0F, d, m, out + k);
    }
    return;
  }
  const float z = w.kind == io::QuantKind::kQ4Sym ? 8.0F : 0.0F;
  const __m512i low = _mm512_set1_epi32(15);
  for (int64_t k0 = 0; k0 < K; k0 += io::kQ4Chunk) {
    const int64_t half = std::min(io::kQ4Chunk, K - k0) / 2;  // a multiple of 16 (K % 32 == 0)
    for (int64_t i = 0; i < half; i += 16) {
      const __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + k0 / 2 + i)));
      group_dm(dp, mp, (k0 + i) / G, &d, &m);
      put16(_mm512_and_si512(b, low), z, d, m, out + k0 + i);
      group_dm(dp, mp, (k0 + half + i) / G, &d, &m);
      put16(_mm512_srli_epi32(b, 4), z, d, m, out + k0 + half + i);
    }
  }
}

}  // namespace ecdlm::kernels::detail
