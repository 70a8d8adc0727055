// The token-lane kernel (quant_lanes.cpp: 16 tokens per vector, one int32 accumulator per (row,
// 16 tokens) over a whole group) reading the weight's output-lane copy (quant_repack.cpp Packed)
// in place, instead of copying each unit's rows into an L1 panel per call (fill_panel: 12% of the
// q8 cached step in the profile, where the weight's cache misses landed). In a packed 16-row block,
// row j's 4 codes of input slot s are the int32 at vector s, lane j, so the kernel's broadcast
// reads them straight from the block: q8 (stored + 128) as vpdpbusd's embedded broadcast; q4 one
// broadcast, then its low nibbles (inputs 4s .. of a 128-input chunk) or high ones (64 + 4s ..).
// A block's bytes are one contiguous stream. Scales come from the packed f16 [NB][K / G][16],
// converted once per group and 16-row block (not per token). q4's K % 128 tail is not packed: its
// groups read the row layout (low nibbles: the tail's first half of inputs, high: the second).
// Same int32 sums per group and the same f32 steps in the same order as the panel kernel, so the
// results are bit-identical to it (test QuantLanesPacked.BitIdenticalToThePanelKernel).
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "ecdlm/kernels/avx512_reduce.h"
#include "ecdlm/kernels/quant_backend.h"

// GCC 12 flags the intrinsics' own _mm512_undefined_* operands: a false -Wmaybe-uninitialized.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace ecdlm::kernels::detail {
namespace {

#define ECDLM_PL_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,f16c")))

// Inputs per K block (x's lanes of one block, 4 KB per 16 tokens, stay in L1 while the unit's row
// tiles run over it) and weight rows per unit (its f32 partial sums, 4 KB per 16 tokens).
constexpr int64_t kKB = 256;
constexpr int64_t kRowsMax = 64;
constexpr int64_t kBlocksMax = kRowsMax / 16 + 1;  // 16-row blocks one unit touches (one more when n0 % 16 != 0)
constexpr int64_t kGroupsMax = kKB / 32;

// A weight format's arithmetic: q8 and q4s carry a zero point (the lanes' bias), q4 a minimum.
enum Fmt { kFmtQ8, kFmtQ4, kFmtQ4Sym };
// Where a group's codes sit: u8 codes (q8), a chunk's low or high nibbles, or q4's unpacked tail.
enum Mode { kU8, kLow, kHigh, kTail };

// A unit's scales (and q4's minimums) of one K block, f32: [block][group][lane].
struct BlockScales {
  alignas(64) float d[kBlocksMax][kGroupsMax][16];
  alignas(64) float m[kBlocksMax][kGroupsMax][16];
};

// part[r][b] (16 tokens of block tb0 + b) += RT rows · x's lanes over group gi. Row r's 4 codes of
// step s are at v + r * rs + s * ss (packed: rs 4, ss 64); kTail: v is row 0's tail chunk (rs its
// row stride), input i0 + 4s a low nibble of byte i0 + 4s below `half`, else a high one of byte
// i0 + 4s - half. kHigh masks the high nibbles in place (16 x the code, one vpandd with the
// broadcast folded in, instead of a shift and a mask) and starts from 16 x the bias: the int32 sum
// is 16 x the group's, exactly, shifted back before the conversion. dw / mw: row r's scale and
// minimum at [r]. Each (row, token) sees the panel
// kernel's steps: the group's int32 sum from the lane bias, one conversion, the scale product
// dx · dw, one FMA into part, then q4's minimum term.
template <int RT, int TBC, Fmt F, int G, Mode MODE>
ECDLM_PL_TARGET inline __attribute__((always_inline)) void group_tile(const uint8_t* v, int64_t rs, int64_t ss,
                                                                      int64_t i0, int64_t half, const QxLanes& x,
                                                                      int64_t gi, int64_t tb0, const float* dw,
                                                                      const float* mw, float* part_r0) {
  constexpr int64_t steps = G / 4;
  constexpr bool Z = F != kFmtQ4, MINS = F == kFmtQ4;
  const int64_t TB = x.TB;
  const __m512i low = _mm512_set1_epi8(0x0F), high = _mm512_set1_epi8(static_cast<char>(0xF0));
  __m512i dot[RT][TBC];
#pragma GCC unroll 4
  for (int b = 0; b < TBC; ++b) {
    __m512i init = Z ? _mm512_loadu_si512(x.bias + (gi * TB + tb0 + b) * 16) : _mm512_setzero_si512();
    if constexpr (MODE == kHigh && Z) init = _mm512_slli_epi32(init, 4);
#pragma GCC unroll 16
    for (int r = 0; r < RT; ++r) dot[r][b] = init;
  }
  const int32_t* xq = x.q + gi * steps * TB * 16 + tb0 * 16;
#pragma GCC unroll 16
  for (int64_t s = 0; s < steps; ++s) {
    __m512i xv[TBC];
#pragma GCC unroll 4
    for (int b = 0; b < TBC; ++b) xv[b] = _mm512_loadu_si512(xq + s * TB * 16 + b * 16);
    int64_t off = s * ss;
    int sh = 0;
    if constexpr (MODE == kTail) {
      const int64_t i = i0 + 4 * s;
      off = i < half ? i : i - half;
      sh = i < half ? 0 : 4;
    }
#pragma GCC unroll 16
    for (int r = 0; r < RT; ++r) {
      int32_t c;
      std::memcpy(&c, v + r * rs + off, 4);
      __m512i wb = _mm512_set1_epi32(c);
      if constexpr (MODE == kLow) wb = _mm512_and_si512(wb, low);
      if constexpr (MODE == kHigh) wb = _mm512_and_si512(wb, high);  // 16 x the code: one op, not two
      if constexpr (MODE == kTail) wb = _mm512_and_si512(_mm512_srl_epi32(wb, _mm_cvtsi32_si128(sh)), low);
#pragma GCC unroll 4
      for (int b = 0; b < TBC; ++b) dot[r][b] = _mm512_dpbusd_epi32(dot[r][b], wb, xv[b]);
    }
  }
#pragma GCC unroll 4
  for (int b = 0; b < TBC; ++b) {
    const int64_t xi = (gi * TB + tb0 + b) * 16;
    const __m512 dx = _mm512_loadu_ps(x.d + xi);
#pragma GCC unroll 16
    for (int r = 0; r < RT; ++r) {
      float* acc = part_r0 + (r * TB + tb0 + b) * 16;
      const __m512 sc = _mm512_mul_ps(dx, _mm512_set1_ps(dw[r]));
      // kHigh summed 16 x the codes (and 16 x the bias): exactly divisible, the same int32 sum.
      const __m512i sum = MODE == kHigh ? _mm512_srai_epi32(dot[r][b], 4) : dot[r][b];
      __m512 a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), sc, _mm512_loadu_ps(acc));
      if constexpr (MINS) a = _mm512_fmadd_ps(_mm512_loadu_ps(x.c + xi), _mm512_set1_ps(mw[r]), a);
      _mm512_storeu_ps(acc, a);
    }
  }
}

// What one K block's row tiles read: the packed copy, the row layout (q4's tail) and the scales.
struct Src {
  const Packed* p = nullptr;
  const QwOperand* w = nullptr;
  int64_t kp = 0;      // inputs in the packed copy (q4: K less its K % 128 tail)
  int64_t b_first = 0;  // the unit's first 16-row block (BlockScales index 0)
  const BlockScales* sc = nullptr;
};

// Rows n .. n + RT - 1 (one 16-row block; r0 = n's index in the unit's part) against token blocks
// tb0 .. tb0 + TBC - 1 over the K block's groups g0 .. g0 + LG - 1.
// pf: where this 16-row block's bytes of the next K block start (null: no prefetch). Each group
// (q4: each chunk) asks for the lines its own inputs take there, so the stream is requested a
// little at a time, one K block ahead.
template <int RT, int TBC, Fmt F, int G>
ECDLM_PL_TARGET void tile(const Src& src, int64_t n, int64_t r0, int64_t g0, int64_t LG, const QxLanes& x,
                          int64_t tb0, float* part, const uint8_t* pf) {
  const Packed& p = *src.p;
  const int64_t lane = n % 16, blk = n / 16;
  const uint8_t* pb = p.q.data() + blk * p.slots * 64 + 4 * lane;
  const float* dw0 = &src.sc->d[blk - src.b_first][0][lane];
  const float* mw0 = &src.sc->m[blk - src.b_first][0][lane];
  float* part_r0 = part + r0 * x.TB * 16;
  if constexpr (F == kFmtQ8) {
    for (int64_t g = 0; g < LG; ++g) {
      const int64_t gi = g0 + g, k = gi * G;
      if (pf)
        for (int64_t s = 0; s < G / 4; ++s) _mm_prefetch(reinterpret_cast<const char*>(pf + (g * G / 4 + s) * 64), _MM_HINT_T0);
      group_tile<RT, TBC, F, G, kU8>(pb + (k / 4) * 64, 4, 64, 0, 0, x, gi, tb0, dw0 + g * 16, mw0 + g * 16, part_r0);
    }
  } else {
    // q4, chunk by chunk (K blocks and the packed part are whole 128-input chunks): its low-nibble
    // groups (the chunk's first half of inputs), then its high ones, each mode a straight run.
    constexpr int64_t GC = io::kQ4Chunk / G;  // groups per chunk
    int64_t g = 0;
    for (; g < LG && (g0 + g) * G < src.kp; g += GC) {
      const int64_t c = (g0 + g) * G / io::kQ4Chunk;
      const uint8_t* v = pb + c * 16 * 64;
      if (pf)
        for (int64_t s = 0; s < 16; ++s) _mm_prefetch(reinterpret_cast<const char*>(pf + (g / GC * 16 + s) * 64), _MM_HINT_T0);
#pragma GCC unroll 2
      for (int64_t h = 0; h < GC / 2; ++h)
        group_tile<RT, TBC, F, G, kLow>(v + h * G / 4 * 64, 4, 64, 0, 0, x, g0 + g + h, tb0, dw0 + (g + h) * 16,
                                        mw0 + (g + h) * 16, part_r0);
#pragma GCC unroll 2
      for (int64_t h = GC / 2; h < GC; ++h)
        group_tile<RT, TBC, F, G, kHigh>(v + (h - GC / 2) * G / 4 * 64, 4, 64, 0, 0, x, g0 + g + h, tb0,
                                         dw0 + (g + h) * 16, mw0 + (g + h) * 16, part_r0);
    }
    const QwOperand& w = *src.w;
    for (; g < LG; ++g) {  // the K % 128 tail, from the row layout
      const int64_t gi = g0 + g, k = gi * G;
      const uint8_t* tail = w.q + n * w.row_bytes + src.kp / 2;
      group_tile<RT, TBC, F, G, kTail>(tail, w.row_bytes, 0, k - src.kp, (w.K - src.kp) / 2, x, gi, tb0, dw0 + g * 16,
                                       mw0 + g * 16, part_r0);
    }
  }
}

// The unit's rows [nb, nb + nr) over one K block: 8 rows x 2 token blocks, or 16 x 1 for an odd
// last token block (as the panel kernel); a tile never straddles two 16-row blocks (single rows
// where it would, and for the remainder).
// next(n): the prefetch address of the tile starting at row n (its block's first tile of the K
// block's first token pair), else null: the other tiles read the same lines from cache.
template <Fmt F, int G, typename Next>
void unit_block(const Src& src, int64_t nb, int64_t nr, int64_t g0, int64_t LG, const QxLanes& x, float* part,
                const Next& next) {
  int64_t tb = 0;
  for (; tb + 2 <= x.TB; tb += 2)
    for (int64_t r = 0; r < nr;) {
      const uint8_t* pf = tb == 0 && (nb + r) % 16 == 0 ? next(nb + r) : nullptr;
      if (r + 8 <= nr && (nb + r) % 16 + 8 <= 16) {
        tile<8, 2, F, G>(src, nb + r, r, g0, LG, x, tb, part, pf);
        r += 8;
      } else {
        tile<1, 2, F, G>(src, nb + r, r, g0, LG, x, tb, part, pf);
        r += 1;
      }
    }
  if (tb < x.TB)
    for (int64_t r = 0; r < nr;) {
      const uint8_t* pf = tb == 0 && (nb + r) % 16 == 0 ? next(nb + r) : nullptr;
      if (r + 16 <= nr && (nb + r) % 16 == 0) {
        tile<16, 1, F, G>(src, nb + r, r, g0, LG, x, tb, part, pf);
        r += 16;
      } else {
        tile<1, 1, F, G>(src, nb + r, r, g0, LG, x, tb, part, pf);
        r += 1;
      }
    }
}

template <Fmt F, typename Next>
void unit_block_g(int64_t G, const Src& src, int64_t nb, int64_t nr, int64_t g0, int64_t LG, const QxLanes& x,
                  float* part, const Next& next) {
  if (G == 32)
    unit_block<F, 32>(src, nb, nr, g0, LG, x, part, next);
  else
    unit_block<F, 64>(src, nb, nr, g0, LG, x, part, next);
}

// The K block's groups g0 .. g0 + LG - 1 of blocks b0 .. b1 - 1, f16 -> f32 once per 16 rows.
ECDLM_PL_TARGET void convert_scales(const Packed& p, int64_t b0, int64_t b1, int64_t g0, int64_t LG, BlockScales& sc) {
  const int64_t KG = p.K / p.G;
  for (int64_t b = b0; b < b1; ++b)
    for (int64_t g = 0; g < LG; ++g) {
      const size_t at = size_t((b * KG + g0 + g) * 16);
      _mm512_store_ps(sc.d[b - b0][g], half16(p.d.data() + at));
      if (!p.m.empty()) _mm512_store_ps(sc.m[b - b0][g], half16(p.m.data() + at));
    }
}

}  // namespace

void vnni_lane_rows_packed(const QxLanes& x, const Packed& p, const QwOperand& w, int64_t n0, int64_t n1, float* y,
                           int64_t ldy) {
  thread_local std::vector<float> part_buf;
  thread_local BlockScales scales;
  const int64_t G = w.G, K = w.K, TB = x.TB;
  if (static_cast<int64_t>(part_buf.size()) < kRowsMax * TB * 16) part_buf.resize(static_cast<size_t>(kRowsMax * TB * 16));
  float* part = part_buf.data();
  const Fmt f = w.kind == io::QuantKind::kQ8 ? kFmtQ8 : w.kind == io::QuantKind::kQ4 ? kFmtQ4 : kFmtQ4Sym;
  Src src;
  src.p = &p;
  src.w = &w;
  src.kp = f == kFmtQ8 ? K : K - K % io::kQ4Chunk;
  src.sc = &scales;
  const int64_t bytes_per_input = f == kFmtQ8 ? 16 : 8;  // per 16-row block
  for (int64_t nb = n0; nb < n1; nb += kRowsMax) {
    const int64_t nr = std::min(kRowsMax, n1 - nb);
    const int64_t b0 = nb / 16, b1 = (nb + nr + 15) / 16;
    src.b_first = b0;
    std::fill(part, part + nr * TB * 16, 0.0F);
    for (int64_t k0 = 0; k0 < K; k0 += kKB) {
      const int64_t LG = std::min(kKB, K - k0) / G, g0 = k0 / G;
      convert_scales(p, b0, b1, g0, LG, scales);
      // A block's stream is contiguous over K, but a K block's part of it is ~one 4 KB page and the
      // hardware prefetchers stop at page boundaries: each block's first tile asks for its next K
      // block (after the unit's last, the block one unit further on: the next unit's first).
      const auto next = [&](int64_t n) -> const uint8_t* {
        const int64_t blk = n / 16;
        if (k0 + kKB < src.kp) return p.q.data() + blk * p.slots * 64 + (k0 + kKB) * bytes_per_input;
        const int64_t far = blk + kRowsMax / 16;
        return far < p.NB ? p.q.data() + far * p.slots * 64 : nullptr;
      };
      if (f == kFmtQ8)
        unit_block_g<kFmtQ8>(G, src, nb, nr, g0, LG, x, part, next);
      else if (f == kFmtQ4)
        unit_block_g<kFmtQ4>(G, src, nb, nr, g0, LG, x, part, next);
      else
        unit_block_g<kFmtQ4Sym>(G, src, nb, nr, g0, LG, x, part, next);
    }
    // Token-major, as the panel kernel: each token's nr outputs contiguous in y.
    for (int64_t m = 0; m < x.M; ++m)
      for (int64_t r = 0; r < nr; ++r) y[m * ldy + (nb + r - n0)] = part[(r * TB + m / 16) * 16 + m % 16];
  }
}

}  // namespace ecdlm::kernels::detail
