// The many-row AVX512-VNNI kernel for quantized weights: 16 tokens per vector (the token-lane
// operand of quant_backend.h). The 4 x 4 tiles of quant_avx512.cpp pay a conversion, a scale
// product and an FMA for every vpdpbusd (a 64-input vector spans two groups of 32, so int32 sums
// never outlive one instruction): 4 instructions per 64 MACs, twice vdpbf16ps' count, so at 32
// token rows (a cached step's projections, compute-bound) q8 and q4 ran no faster than bf16.
// Here a weight row's 4 codes are broadcast to all 16 lanes, each lane one token, and one int32
// accumulator per (row, 16 tokens) runs over the whole group (G / 4 instructions); then one
// conversion, one scale product and one FMA per group: ~1.4 instructions per vpdpbusd.
//
// The weight is the unsigned operand: a unit's rows are first copied, one K block at a time, into
// an L1 panel as u8 (q8: code + 128; q4: nibbles unpacked in input order), scales to f32. x is
// the signed operand; the q8 / q4s zero point is paid back by the lanes' bias (-z · group code
// sum) as each group's accumulator starts.
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "ecdlm/kernels/quant_backend.h"

// GCC 12 flags the intrinsics' own _mm512_undefined_* operands: a false -Wmaybe-uninitialized.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace ecdlm::kernels::detail {
namespace {

#define ECDLM_LANE_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,f16c")))

// Inputs per K block: a multiple of q4's 128-input chunk and of both groups. A unit's panel
// (64 rows x 256 u8 = 16 KB) and x's block (256 / 4 x 16 tokens x 4 bytes = 16 KB per 32 tokens)
// stay in L1 while the unit's row tiles run over them.
constexpr int64_t kKB = 256;
constexpr int64_t kRowsMax = 64;  // rows per panel
// Prefetch distance in blocks: the panel copy reads each row kKB inputs at a time, row after row,
// a stride the hardware prefetchers follow poorly; the next block's bytes are asked for one ahead.
constexpr int64_t kPrefetchBlocks = 1;

struct Panel {
  alignas(64) uint8_t q[kRowsMax * kKB];
  alignas(64) float d[kRowsMax * (kKB / 32)];
  alignas(64) float m[kRowsMax * (kKB / 32)];
};

// Rows [n0, n0 + nr) of w, inputs [k0, k0 + L), into the panel (row stride kKB, scale stride kKB / G).
ECDLM_LANE_TARGET void fill_panel(const QwOperand& w, int64_t n0, int64_t nr, int64_t k0, int64_t L, Panel& p) {
  const int64_t G = w.G, KG = w.K / G, LG = L / G, SG = kKB / G;
  const bool q8 = w.kind == io::QuantKind::kQ8;
  const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80)), low = _mm512_set1_epi8(0x0F);
  for (int64_t r = 0; r < nr; ++r) {
    const uint8_t* row = w.q + (n0 + r) * w.row_bytes;
    uint8_t* out = p.q + r * kKB;
    if (q8) {
      for (int64_t i = 0; i < L; i += 64) {
        const auto mask = L - i >= 64 ? ~0ULL : (1ULL << (L - i)) - 1;
        _mm512_mask_storeu_epi8(out + i, mask, _mm512_xor_si512(_mm512_maskz_loadu_epi8(mask, row + k0 + i), flip));
      }
      for (int64_t i = 0; i < kPrefetchBlocks * kKB && k0 + L + i < w.K; i += 64)
        _mm_prefetch(reinterpret_cast<const char*>(row + k0 + L + i), _MM_HINT_T0);
    } else {
      for (int64_t c0 = k0; c0 < k0 + L; c0 += io::kQ4Chunk) {  // k0 is chunk-aligned (kKB % 128 == 0)
        const int64_t half = std::min(io::kQ4Chunk, w.K - c0) / 2;
        const auto mask = half == 64 ? ~0ULL : (1ULL << half) - 1;
        const __m512i v = _mm512_maskz_loadu_epi8(mask, row + c0 / 2);
        _mm512_mask_storeu_epi8(out + (c0 - k0), mask, _mm512_and_si512(v, low));
        _mm512_mask_storeu_epi8(out + (c0 - k0) + half, mask, _mm512_and_si512(_mm512_srli_epi16(v, 4), low));
      }
      for (int64_t i = 0; i < kPrefetchBlocks * kKB / 2 && (k0 + L) / 2 + i < w.row_bytes; i += 64)
        _mm_prefetch(reinterpret_cast<const char*>(row + (k0 + L) / 2 + i), _MM_HINT_T0);
    }
    const uint16_t* d = w.d + (n0 + r) * KG + k0 / G;
    for (int64_t j = 0; j < LG; ++j) p.d[r * SG + j] = _cvtsh_ss(d[j]);
    if (w.m) {
      const uint16_t* m = w.m + (n0 + r) * KG + k0 / G;
      for (int64_t j = 0; j < LG; ++j) p.m[r * SG + j] = _cvtsh_ss(m[j]);
    }
  }
}

// part[r][b] (f32, 16 tokens of block tb0 + b) += rows r0 .. r0 + RT - 1 of the panel · x over the
// block's LG groups. RT x TBC = 16 int32 accumulators: vpdpbusd's latency is ~15 times its issue
// interval on these cores (measured: 16 independent chains run 3.7x faster than 4), so fewer
// chains stall. The f32 sums are updated once per group and live in `part` (L1).
// G is a template argument so the group's G / 4 steps unroll fully: GCC keeps a rolled loop's
// vpdpbusd accumulators apart from their copies and moves (and spills) them every step.
// Z: the lanes carry a bias (q8, q4s); MINS: q4's minimum term.
template <int RT, int TBC, bool Z, bool MINS, int G>
ECDLM_LANE_TARGET void tile(const Panel& p, int64_t r0, int64_t LG, const QxLanes& x, int64_t k0, int64_t tb0,
                            float* part) {
  constexpr int64_t SG = kKB / G, steps = G / 4;
  const int64_t TB = x.TB;
  const int32_t* xq = x.q + (k0 / 4) * TB * 16 + tb0 * 16;
  const int64_t g0 = k0 / G;
  for (int64_t g = 0; g < LG; ++g) {
    __m512i dot[RT][TBC];
#pragma GCC unroll 4
    for (int b = 0; b < TBC; ++b) {
      const __m512i init = Z ? _mm512_loadu_si512(x.bias + ((g0 + g) * TB + tb0 + b) * 16) : _mm512_setzero_si512();
#pragma GCC unroll 16
      for (int r = 0; r < RT; ++r) dot[r][b] = init;
    }
    const uint8_t* wq = p.q + r0 * kKB + g * G;
#pragma GCC unroll 16
    for (int64_t s = 0; s < steps; ++s) {
      __m512i xv[TBC];
#pragma GCC unroll 4
      for (int b = 0; b < TBC; ++b) xv[b] = _mm512_loadu_si512(xq + (g * steps + s) * TB * 16 + b * 16);
#pragma GCC unroll 16
      for (int r = 0; r < RT; ++r) {
        int32_t v;
        std::memcpy(&v, wq + r * kKB + 4 * s, 4);
        const __m512i wb = _mm512_set1_epi32(v);
#pragma GCC unroll 4
        for (int b = 0; b < TBC; ++b) dot[r][b] = _mm512_dpbusd_epi32(dot[r][b], wb, xv[b]);
      }
    }
#pragma GCC unroll 4
    for (int b = 0; b < TBC; ++b) {
      const int64_t gi = ((g0 + g) * TB + tb0 + b) * 16;
      const __m512 dx = _mm512_loadu_ps(x.d + gi);
#pragma GCC unroll 16
      for (int r = 0; r < RT; ++r) {
        float* acc = part + ((r0 + r) * TB + tb0 + b) * 16;
        const __m512 sc = _mm512_mul_ps(dx, _mm512_set1_ps(p.d[(r0 + r) * SG + g]));
        __m512 a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[r][b]), sc, _mm512_loadu_ps(acc));
        if constexpr (MINS) a = _mm512_fmadd_ps(_mm512_loadu_ps(x.c + gi), _mm512_set1_ps(p.m[(r0 + r) * SG + g]), a);
        _mm512_storeu_ps(acc, a);
      }
    }
  }
}

// Register tiles over the panel's nr rows: 16 rows x 1 token block, or 8 x 2; remainders 1 x 1.
template <bool Z, bool MINS, int G>
void panel_rows_g(const Panel& p, int64_t nr, int64_t LG, const QxLanes& x, int64_t k0, float* part) {
  int64_t tb = 0;
  for (; tb + 2 <= x.TB; tb += 2) {
    int64_t r = 0;
    for (; r + 8 <= nr; r += 8) tile<8, 2, Z, MINS, G>(p, r, LG, x, k0, tb, part);
    for (; r < nr; ++r) tile<1, 2, Z, MINS, G>(p, r, LG, x, k0, tb, part);
  }
  if (tb < x.TB) {
    int64_t r = 0;
    for (; r + 16 <= nr; r += 16) tile<16, 1, Z, MINS, G>(p, r, LG, x, k0, tb, part);
    for (; r < nr; ++r) tile<1, 1, Z, MINS, G>(p, r, LG, x, k0, tb, part);
  }
}

template <bool Z, bool MINS>
void panel_rows(const Panel& p, int64_t nr, int64_t G, int64_t LG, const QxLanes& x, int64_t k0, float* part) {
  if (G == 32)
    panel_rows_g<Z, MINS, 32>(p, nr, LG, x, k0, part);
  else
    panel_rows_g<Z, MINS, 64>(p, nr, LG, x, k0, part);
}

}  // namespace

QxLanes build_lanes(const QxOperand& x, int32_t z, QxLaneScratch& buf) {
  const int64_t M = x.M, K = x.K, G = x.G, KG = K / G, TB = (M + 15) / 16, K4 = K / 4;
  const auto grow = [](auto& v, int64_t n) {
    if (static_cast<int64_t>(v.size()) < n) v.resize(static_cast<size_t>(n));
    return v.data();
  };
  int32_t* q = grow(buf.q, K4 * TB * 16);
  int32_t* bias = grow(buf.bias, KG * TB * 16);
  float* d = grow(buf.d, KG * TB * 16);
  float* c = grow(buf.c, KG * TB * 16);
  for (int64_t tb = 0; tb < TB; ++tb)
    for (int64_t t = 0; t < 16; ++t) {
      const int64_t m = tb * 16 + t;
      const int64_t lane = tb * 16 + t;  // offset inside one [TB][16] slab
      if (m >= M) {
        for (int64_t s = 0; s < K4; ++s) q[s * TB * 16 + lane] = 0;
        for (int64_t g = 0; g < KG; ++g) bias[g * TB * 16 + lane] = 0, d[g * TB * 16 + lane] = 0, c[g * TB * 16 + lane] = 0;
        continue;
      }
      const int8_t* row = x.q + m * K;
      for (int64_t s = 0; s < K4; ++s) std::memcpy(q + s * TB * 16 + lane, row + 4 * s, 4);
      for (int64_t g = 0; g < KG; ++g) {
        int32_t sum = 0;
        for (int64_t k = g * G; k < (g + 1) * G; ++k) sum += row[k];
        bias[g * TB * 16 + lane] = -z * sum;
        d[g * TB * 16 + lane] = x.d[m * KG + g];
        c[g * TB * 16 + lane] = x.c[m * KG + g];
      }
    }
  return {M, K, G, TB, q, bias, d, c};
}

void vnni_lane_rows(const QxLanes& x, const QwOperand& w, int64_t n0, int64_t n1, float* y, int64_t ldy) {
  if (w.packed) return vnni_lane_rows_packed(x, *w.packed, w, n0, n1, y, ldy);
  thread_local Panel panel;
  thread_local std::vector<float> part_buf;
  const int64_t G = w.G, K = w.K, TB = x.TB;
  if (static_cast<int64_t>(part_buf.size()) < kRowsMax * TB * 16) part_buf.resize(static_cast<size_t>(kRowsMax * TB * 16));
  float* part = part_buf.data();
  const bool z = vnni_zero_point(w.kind) != 0, mins = w.m != nullptr;
  for (int64_t nb = n0; nb < n1; nb += kRowsMax) {
    const int64_t nr = std::min(kRowsMax, n1 - nb);
    std::fill(part, part + nr * TB * 16, 0.0F);
    for (int64_t k0 = 0; k0 < K; k0 += kKB) {
      const int64_t L = std::min(kKB, K - k0), LG = L / G;
      fill_panel(w, nb, nr, k0, L, panel);
      if (z)
        panel_rows<true, false>(panel, nr, G, LG, x, k0, part);
      else if (mins)
        panel_rows<false, true>(panel, nr, G, LG, x, k0, part);
      else
        panel_rows<false, false>(panel, nr, G, LG, x, k0, part);
    }
    // Token-major: each token's nr outputs are contiguous in y. (Row-major order stored a column
    // of y, ldy floats apart: at ldy = 2048 every store hit the same L1 set, about 180 ns a row.)
    for (int64_t m = 0; m < x.M; ++m)
      for (int64_t r = 0; r < nr; ++r) y[m * ldy + (nb + r - n0)] = part[(r * TB + m / 16) * 16 + m % 16];
  }
}

}  // namespace ecdlm::kernels::detail
