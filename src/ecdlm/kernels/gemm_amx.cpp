// AMX-BF16 backend. A cached decoding step multiplies a few token rows by large weights, so the
// product must stream the weights at memory speed. oneDNN's bf16 matmul reorders the weight
// (its B operand) on every call and reached 8-16 GB/s at 32 rows on a Xeon whose two cores
// stream 28 GB/s. Here the weight is the A operand: its rows load as stored, 16 rows x 64 bytes
// a tile. The token rows (B operand) are packed once per call into pair-interleaved columns.
// Tiles: C 0-3 (16 weight rows x 16 tokens, f32), A 4-5 (two 16-row weight slices), B 6-7
// (two 16-token column groups).
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "ecdlm/kernels/amx_tiles.h"
#include "ecdlm/kernels/backend.h"

namespace ecdlm::kernels::detail {
namespace {

#define ECDLM_AMX_TARGET __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw")))

TileConfig make_config() {
  TileConfig c;
  for (int t = 0; t < 8; ++t) {
    c.rows[t] = 16;
    c.colsb[t] = 64;
  }
  return c;
}

const TileConfig kConfig = make_config();

// C[0..3] += A-slices x B-groups over all K chunks, then C -> y (transposed: C rows are weight
// rows, its columns tokens). R2: two 16-row weight slices; G2: two 16-token groups.
template <bool R2, bool G2>
ECDLM_AMX_TARGET void tile_block(const uint16_t* w, int64_t K, const uint16_t* xp0, const uint16_t* xp1, int64_t c0,
                                 int64_t M, int64_t R, float* y, int64_t ldy) {
  const int64_t KC = K / kAmxK, ld_w = K * 2;
  _tile_zero(0);
  if constexpr (R2) _tile_zero(1);
  if constexpr (G2) _tile_zero(2);
  if constexpr (R2 && G2) _tile_zero(3);
  for (int64_t kc = 0; kc < KC; ++kc) {
    _tile_loadd(6, xp0 + kc * 512, 64);
    _tile_loadd(4, w + kc * kAmxK, ld_w);
    _tile_dpbf16ps(0, 4, 6);
    if constexpr (R2) {
      _tile_loadd(5, w + 16 * K + kc * kAmxK, ld_w);
      _tile_dpbf16ps(1, 5, 6);
    }
    if constexpr (G2) {
      _tile_loadd(7, xp1 + kc * 512, 64);
      _tile_dpbf16ps(2, 4, 7);
      if constexpr (R2) _tile_dpbf16ps(3, 5, 7);
    }
  }
  alignas(64) float c[4][16][16];
  _tile_stored(0, c[0], 64);
  if constexpr (R2) _tile_stored(1, c[1], 64);
  if constexpr (G2) _tile_stored(2, c[2], 64);
  if constexpr (R2 && G2) _tile_stored(3, c[3], 64);
  // c[t][r][j]: (folded) weight row (t & 1) * 16 + r, column c0 + (t >> 1) * 16 + j = q * M + m.
  for (int t = 0; t < 4; ++t) {
    if ((t & 1) && !R2) continue;
    if ((t >> 1) && !G2) continue;
    const int64_t ct = c0 + (t >> 1) * 16, rows_off = (t & 1) * 16;
    const int64_t cn = std::min<int64_t>(16, R * M - ct);
    for (int64_t j = 0; j < cn; ++j) {
      const int64_t q = (ct + j) / M, m = (ct + j) % M;
      float* yr = y + m * ldy + rows_off * R + q;
      for (int r = 0; r < 16; ++r) yr[r * R] = c[t][r][j];
    }
  }
}

}  // namespace

bool amx_usable(int feature_bit) {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  if (!((d >> kCpuidAmxTile) & 1U) || !((d >> feature_bit) & 1U)) return false;
  // Linux (5.16+) hands out tile data per process on request (arch_prctl ARCH_REQ_XCOMP_PERM).
  constexpr int kArchGetXcompPerm = 0x1022, kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  if (syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) != 0) return false;
  unsigned long perm = 0;
  if (syscall(SYS_arch_prctl, kArchGetXcompPerm, &perm) != 0) return false;
  return (perm >> kXfeatureXtiledata) & 1UL;
}

bool cpu_amx_bf16() {
  static const bool has = amx_usable(kCpuidAmxBf16);
  return has;
}

bool cpu_amx_int8() {
  static const bool has = amx_usable(kCpuidAmxInt8);
  return has;
}

int64_t amx_fold(int64_t M, int64_t K, int64_t N) {
  // At most 4 rows (64-row work units): K = 512 folds to a page, K = 256 to half a page.
  int64_t R = K < kPageElems && kPageElems % K == 0 ? std::min<int64_t>(4, kPageElems / K) : 1;
  while (R > 1 && (N % (16 * R) != 0 || R * M > 32)) R /= 2;
  return R;
}

int64_t amx_packed_size(int64_t M, int64_t K, int64_t R) { return (R * M + 15) / 16 * 16 * R * K; }

void amx_pack_chunk(const uint16_t* src, int64_t ld, int64_t M, int64_t K, int64_t R, uint16_t* xp, int64_t kc) {
  // Chunk kc of the folded K' = R K belongs to segment q; column q2 * M + m holds token m's values
  // there if q2 == q, zeros otherwise (and the padding columns are zeros).
  const int64_t q = kc / (K / kAmxK), cols = (R * M + 15) / 16 * 16;
  for (int64_t c = 0; c < cols; ++c) {
    const bool live = c < R * M && c / M == q;
    avx512_scatter_pairs(live ? src + (c % M) * ld : nullptr, xp + amx_packed_offset(c, kc * kAmxK, R * K), 32);
  }
}

void amx_pack(const uint16_t* x, int64_t M, int64_t K, int64_t R, uint16_t* xp, int64_t kc0, int64_t kc1) {
  const int64_t KC = K / kAmxK;
  for (int64_t kc = kc0; kc < kc1; ++kc) amx_pack_chunk(x + (kc % KC) * kAmxK, K, M, K, R, xp, kc);
}

ECDLM_AMX_TARGET void amx_begin() { asm volatile("ldtilecfg %0" ::"m"(kConfig)); }
ECDLM_AMX_TARGET void amx_end() { _tile_release(); }

void amx_rows(const uint16_t* xp, int64_t M, int64_t K, int64_t R, const uint16_t* w, int64_t n0, int64_t n1, float* y,
              int64_t ldy) {
  // In folded terms: rows n0 / R .. n1 / R of R K elements, R M columns.
  const int64_t Kf = R * K, KC = Kf / kAmxK, groups = (R * M + 15) / 16;
  const int64_t s0 = n0 / R, s1 = n1 / R;
  for (int64_t s = s0; s < s1;) {
    const bool two_rows = s + 32 <= s1;
    for (int64_t g = 0; g < groups; g += 2) {
      const uint16_t* xp0 = xp + g * KC * 512;
      const uint16_t* xp1 = xp0 + KC * 512;
      float* yb = y + (s - s0) * R;
      const bool two_groups = g + 1 < groups;
      const uint16_t* ws = w + s * Kf;
      if (two_rows && two_groups) tile_block<true, true>(ws, Kf, xp0, xp1, g * 16, M, R, yb, ldy);
      else if (two_rows) tile_block<true, false>(ws, Kf, xp0, xp1, g * 16, M, R, yb, ldy);
      else if (two_groups) tile_block<false, true>(ws, Kf, xp0, xp1, g * 16, M, R, yb, ldy);
      else tile_block<false, false>(ws, Kf, xp0, xp1, g * 16, M, R, yb, ldy);
    }
    s += two_rows ? 32 : 16;
  }
}

}  // namespace ecdlm::kernels::detail
