// AMX-INT8 products over the repacked copies (quant_backend.h Packed). The few-row VNNI kernel
// is bound by its per-token work from ~9 token rows (one vpdpbusd and one broadcast per 64 codes
// and token, ~62% of vpdpbusd's peak at 32 rows): the 32-token projections of a cached step, the
// LM head's masked rows, experts with many rows, a served batch, a prefill. One tdpbsud multiplies
// 16 tokens by 16 weight rows over a whole group (G = 64: 16 K of multiply-adds), so the products
// cost ~1/16 of the VNNI kernel's and what is left is the per-group epilogue, identical to it.
//
// Operands, with no copy of the weight: a 16-row block's group of G inputs is G / 4 consecutive
// 64-byte slots of the copy, each slot 16 rows x 4 codes, which is exactly tdpbsud's B tile (row
// k = inputs 4k .. 4k + 3, dword j = output row j); q8 codes are stored + 128 (unsigned, as B
// wants), q4's nibbles are masked into a 1 KB L1 buffer per group. A = 16 token rows of x's codes
// (signed), read in place with stride K (the last partial 16 from a padded copy). C = [16 tokens,
// 16 rows] int32. Tiles: C 0-3 (token halves x block pair), A 4-5, B 6-7.
//
// Bits: per (row, token) the int32 group sum plus the group bias is the VNNI kernel's (integer
// sums, exact in any order), then the same f32 steps in the same order (group by group, scale
// product, FMA, q4's minimum term), so a row's result does not depend on which kernel ran it or
// on its batch. No CPU this was written on has AMX: the tile operations also exist as scalar
// emulation following the instructions' definitions (EmuTiles), which the tests run everywhere;
// the hardware tiles are tested where the CPU has them.
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <random>
#include <vector>

#include "ecdlm/kernels/amx_tiles.h"
#include "ecdlm/kernels/avx512_reduce.h"
#include "ecdlm/kernels/quant_backend.h"

#pragma GCC diagnostic ignored "-Wuninitialized"  // _mm512_undefined_ps inside GCC's intrinsics
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace ecdlm::kernels::detail {

namespace {

std::atomic<bool> g_emulated{false};
std::atomic<int64_t> g_amx_min_rows{kPackedAmxMinRows};

#define ECDLM_AMX8_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,f16c")))

// Tile operations as inline assembly (the intrinsics stringify their tile numbers, which must then
// be literals; "i" operands take template arguments). Every one is volatile with a memory clobber:
// tile loads and stores move memory the compiler does not see.
struct HwTiles {
  static void config(const TileConfig& c) { asm volatile("ldtilecfg %0" ::"m"(c) : "memory"); }
  static void release() { asm volatile("tilerelease" ::: "memory"); }
  template <int T>
  static void zero() {
    asm volatile("tilezero %%tmm%c0" ::"i"(T));
  }
  template <int T>
  static void load(const void* p, int64_t stride) {
    asm volatile("tileloadd (%0,%1,1), %%tmm%c2" ::"r"(p), "r"(stride), "i"(T) : "memory");
  }
  template <int T>
  static void store(void* p, int64_t stride) {
    asm volatile("tilestored %%tmm%c2, (%0,%1,1)" ::"r"(p), "r"(stride), "i"(T) : "memory");
  }
  // C += A (signed bytes) x B (unsigned bytes), dword sums of 4 products.
  template <int C, int A, int B>
  static void dpbsud() {
    asm volatile("tdpbsud %%tmm%c0, %%tmm%c1, %%tmm%c2" ::"i"(B), "i"(A), "i"(C));
  }
};

// The same operations on per-thread arrays, shaped by the loaded configuration as the hardware
// shapes its tiles (rows x colsb bytes; rows and columns past the shape are zero after a load).
struct EmuState {
  TileConfig cfg;
  alignas(64) uint8_t t[8][16][64];
};
thread_local EmuState g_emu;

struct EmuTiles {
  static void config(const TileConfig& c) {
    g_emu.cfg = c;
    std::memset(g_emu.t, 0, sizeof g_emu.t);
  }
  static void release() { std::memset(g_emu.t, 0, sizeof g_emu.t); }
  template <int T>
  static void zero() {
    std::memset(g_emu.t[T], 0, sizeof g_emu.t[T]);
  }
  template <int T>
  static void load(const void* p, int64_t stride) {
    std::memset(g_emu.t[T], 0, sizeof g_emu.t[T]);
    for (int r = 0; r < g_emu.cfg.rows[T]; ++r)
      std::memcpy(g_emu.t[T][r], static_cast<const uint8_t*>(p) + r * stride, g_emu.cfg.colsb[T]);
  }
  template <int T>
  static void store(void* p, int64_t stride) {
    for (int r = 0; r < g_emu.cfg.rows[T]; ++r)
      std::memcpy(static_cast<uint8_t*>(p) + r * stride, g_emu.t[T][r], g_emu.cfg.colsb[T]);
  }
  // tdpbsud: C.row[m].dword[n] += Σ_k Σ_i s8(A.row[m].byte[4k + i]) · u8(B.row[k].byte[4n + i]),
  // m < C.rows, n < C.colsb / 4, k < A.colsb / 4 (= B.rows).
  template <int C, int A, int B>
  static void dpbsud() {
    const auto& cfg = g_emu.cfg;
    for (int m = 0; m < cfg.rows[C]; ++m)
      for (int n = 0; n < cfg.colsb[C] / 4; ++n) {
        int32_t acc;
        std::memcpy(&acc, g_emu.t[C][m] + 4 * n, 4);
        for (int k = 0; k < cfg.colsb[A] / 4; ++k)
          for (int i = 0; i < 4; ++i)
            acc += static_cast<int32_t>(static_cast<int8_t>(g_emu.t[A][m][4 * k + i])) *
                   static_cast<int32_t>(g_emu.t[B][k][4 * n + i]);
        std::memcpy(g_emu.t[C][m] + 4 * n, &acc, 4);
      }
  }
};

// Tiles 0-3: C [16 tokens, 16 rows] int32; 4-5: A [16 tokens, G bytes]; 6-7: B [G / 4, 64 bytes].
TileConfig config_for(int G) {
  TileConfig c;
  for (int t = 0; t < 8; ++t) {
    c.rows[t] = static_cast<uint8_t>(t < 6 ? 16 : G / 4);
    c.colsb[t] = static_cast<uint16_t>(t == 4 || t == 5 ? G : 64);
  }
  return c;
}

// The group's int32 sums of one 16-token chunk (c16: 16 x 16, stride 16) into acc [M][2][16]:
// block j's lanes of token m, as pair_group / group() step them.
template <bool MINS>
ECDLM_AMX8_TARGET inline void epilogue(const int32_t* c16, int j, const QxOperand& x, int64_t m0, int64_t mn,
                                       int64_t g, __m512 dw, __m512 mv, float* acc) {
  const int64_t KG = x.K / x.G;
  for (int64_t i = 0; i < mn; ++i) {
    const int64_t m = m0 + i;
    const __m512i sum = _mm512_add_epi32(_mm512_load_si512(c16 + i * 16), _mm512_set1_epi32(x.gb[m * KG + g]));
    float* a = acc + (m * 2 + j) * 16;
    __m512 r = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_mul_ps(dw, _mm512_set1_ps(x.d[m * KG + g])),
                               _mm512_loadu_ps(a));
    if constexpr (MINS) r = _mm512_fmadd_ps(mv, _mm512_set1_ps(x.c[m * KG + g]), r);
    _mm512_storeu_ps(a, r);
  }
}

// Blocks [b0, b1) of p against all of x's tokens: y[m * ldy + (b - b0) * 16 + r], the last block's
// first rows_last rows. Two blocks at a time (B 6 and 7), tokens 32 at a time (A 4 and 5).
template <class T, int G>
ECDLM_AMX8_TARGET void tiles(const QxOperand& x, const Packed& p, bool q8, int64_t b0, int64_t b1, int rows_last,
                             float* y, int64_t ldy) {
  constexpr int NS = G / 4;
  const int64_t M = x.M, K = x.K, KG = K / G, chunks = (M + 15) / 16, tail = M - (chunks - 1) * 16;
  // The last chunk's rows from a 16-row copy when it is partial: a tile load reads 16 rows.
  thread_local std::vector<int8_t> pad;
  const int8_t* last = x.q + (chunks - 1) * 16 * K;
  if (tail < 16) {
    if (static_cast<int64_t>(pad.size()) < 16 * K) pad.resize(static_cast<size_t>(16 * K));
    std::memcpy(pad.data(), last, static_cast<size_t>(tail * K));
    last = pad.data();
  }
  const auto a_rows = [&](int64_t c) { return c + 1 == chunks ? last : x.q + c * 16 * K; };
  thread_local std::vector<float> acc_buf;
  if (static_cast<int64_t>(acc_buf.size()) < M * 32) acc_buf.resize(static_cast<size_t>(M * 32));
  float* acc = acc_buf.data();
  alignas(64) int32_t c[4][16][16];
  alignas(64) uint8_t nib[2][NS * 64];  // q4: a group's codes, unpacked
  const bool mins = !p.m.empty();
  const TileConfig cfg = config_for(G);
  T::config(cfg);
  for (int64_t b = b0; b < b1; b += 2) {
    const bool two = b + 1 < b1;
    std::fill(acc, acc + M * 32, 0.0F);
    const uint8_t* q[2] = {p.q.data() + b * p.slots * 64, two ? p.q.data() + (b + 1) * p.slots * 64 : nullptr};
    for (int64_t g = 0; g < KG; ++g) {
      const int64_t k = g * G;
      __m512 dw[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()}, mv[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};
      for (int j = 0; j < (two ? 2 : 1); ++j) {
        dw[j] = half16(p.d.data() + ((b + j) * KG + g) * 16);
        if (mins) mv[j] = half16(p.m.data() + ((b + j) * KG + g) * 16);
        const uint8_t* v;
        if (q8) {
          v = q[j] + g * NS * 64;
          for (int s = 0; s < NS; ++s) _mm_prefetch(reinterpret_cast<const char*>(v + kPackedPrefetch + s * 64), _MM_HINT_T0);
        } else {
          // Group g's codes: the low (inputs k .. k + 63 of the 128-input chunk) or high nibbles of
          // the chunk's vectors (in % 64) / 4 onwards.
          const int64_t in = k % 128;
          const uint8_t* src = q[j] + (k / 128 * 16 + (in % 64) / 4) * 64;
          if (in == 0)
            for (int s = 0; s < 16; ++s)
              _mm_prefetch(reinterpret_cast<const char*>(src + kPackedPrefetch + s * 64), _MM_HINT_T0);
          const __m512i low = _mm512_set1_epi8(0x0F);
          for (int s = 0; s < NS; ++s) {
            __m512i w = _mm512_loadu_si512(src + s * 64);
            if (in >= 64) w = _mm512_srli_epi16(w, 4);
            _mm512_store_si512(nib[j] + s * 64, _mm512_and_si512(w, low));
          }
          v = nib[j];
        }
        j == 0 ? T::template load<6>(v, 64) : T::template load<7>(v, 64);
      }
      for (int64_t ch = 0; ch < chunks; ch += 2) {
        const bool second = ch + 1 < chunks;
        T::template zero<0>();
        T::template load<4>(a_rows(ch) + k, K);
        T::template dpbsud<0, 4, 6>();
        if (two) {
          T::template zero<1>();
          T::template dpbsud<1, 4, 7>();
        }
        if (second) {
          T::template zero<2>();
          T::template load<5>(a_rows(ch + 1) + k, K);
          T::template dpbsud<2, 5, 6>();
          if (two) {
            T::template zero<3>();
            T::template dpbsud<3, 5, 7>();
          }
        }
        T::template store<0>(c[0], 64);
        if (two) T::template store<1>(c[1], 64);
        if (second) T::template store<2>(c[2], 64);
        if (second && two) T::template store<3>(c[3], 64);
        for (int h = 0; h < (second ? 2 : 1); ++h) {
          const int64_t m0 = (ch + h) * 16, mn = std::min<int64_t>(16, M - m0);
          for (int j = 0; j < (two ? 2 : 1); ++j) {
            const int32_t* c16 = c[h * 2 + j][0];
            mins ? epilogue<true>(c16, j, x, m0, mn, g, dw[j], mv[j], acc)
                 : epilogue<false>(c16, j, x, m0, mn, g, dw[j], mv[j], acc);
          }
        }
      }
    }
    // Block j of this pair holds 16 rows, the last block of the range rows_last.
    for (int j = 0; j < (two ? 2 : 1); ++j) {
      const int rows = b + j + 1 == b1 ? rows_last : 16;
      const auto mask = static_cast<__mmask16>(rows == 16 ? 0xFFFF : (1U << rows) - 1);
      for (int64_t m = 0; m < M; ++m)
        _mm512_mask_storeu_ps(y + m * ldy + (b + j - b0) * 16, mask, _mm512_loadu_ps(acc + (m * 2 + j) * 16));
    }
  }
  T::release();
}

// amx_packed_rows on emulated or hardware tiles.
void run_tiles(const QxOperand& x, const Packed& p, const QwOperand& w, int64_t n0, int64_t n1, float* y, int64_t ldy,
               bool emulated) {
  if (x.M == 0 || n1 <= n0) return;
  const bool q8 = w.kind == io::QuantKind::kQ8;
  const int64_t b0 = n0 / 16, b1 = (n1 + 15) / 16;  // n0 % 16 == 0
  const int rows_last = static_cast<int>(n1 - (b1 - 1) * 16);
  if (emulated)
    p.G == 32 ? tiles<EmuTiles, 32>(x, p, q8, b0, b1, rows_last, y, ldy)
              : tiles<EmuTiles, 64>(x, p, q8, b0, b1, rows_last, y, ldy);
  else
    p.G == 32 ? tiles<HwTiles, 32>(x, p, q8, b0, b1, rows_last, y, ldy)
              : tiles<HwTiles, 64>(x, p, q8, b0, b1, rows_last, y, ldy);
}

}  // namespace

int64_t packed_amx_min_rows() { return g_amx_min_rows.load(std::memory_order_relaxed); }
void set_packed_amx_min_rows(int64_t rows) { g_amx_min_rows = rows; }
void set_amx_int8_emulated(bool on) { g_emulated = on; }
bool amx_int8_emulated() { return g_emulated.load(std::memory_order_relaxed); }

bool amx_int8_self_check(bool emulated) {
  std::mt19937 rng(7);
  const auto byte = [&] { return static_cast<uint8_t>(rng() & 0xFF); };
  for (const bool q8 : {true, false}) {  // q8 G 64: B read in place; q4 G 32: unpacked, half-height B
    const int64_t G = q8 ? 64 : 32, K = 256, M = 17, N = 32, KG = K / G;  // M 17: a partial chunk
    Packed p;
    p.NB = N / 16;
    p.K = K;
    p.G = G;
    p.slots = q8 ? K / 4 : K / 8;
    p.q.resize(static_cast<size_t>(p.NB * p.slots * 64));
    for (auto& b : p.q) b = byte();
    p.d.resize(static_cast<size_t>(p.NB * KG * 16));
    for (auto& h : p.d) h = static_cast<uint16_t>(0x3C00 | (rng() & 0x3FF));  // f16 in [1, 2)
    if (!q8) p.m.assign(p.d.size(), 0xB800);                                   // -0.5
    std::vector<int8_t> xq(static_cast<size_t>(M * K));
    for (auto& c : xq) c = static_cast<int8_t>(static_cast<int>(rng() % 255) - 127);
    std::vector<float> xd(static_cast<size_t>(M * KG)), xc(xd.size());
    std::vector<int32_t> xgb(xd.size());
    for (size_t i = 0; i < xd.size(); ++i) {
      xd[i] = 1.0F / static_cast<float>(1 + rng() % 97);
      xc[i] = static_cast<float>(static_cast<int>(rng() % 2001) - 1000) * 1e-3F;
      xgb[i] = static_cast<int32_t>(rng() % 20001) - 10000;
    }
    QxOperand x;
    x.M = M;
    x.K = K;
    x.G = G;
    x.q = xq.data();
    x.d = xd.data();
    x.c = xc.data();
    x.gb = xgb.data();
    QwOperand w;
    w.kind = q8 ? io::QuantKind::kQ8 : io::QuantKind::kQ4;
    w.K = K;
    w.G = G;
    w.packed = &p;
    std::vector<float> ref(static_cast<size_t>(M * N)), got(ref.size(), -1.0F);
    vnni_packed_rows(x, p, w, 0, N, ref.data(), N);
    run_tiles(x, p, w, 0, N, got.data(), N, emulated);
    if (std::memcmp(ref.data(), got.data(), ref.size() * sizeof(float)) != 0) return false;
  }
  return true;
}

bool amx_packed_applies(const Packed& p, const QwOperand& w) {
  return (w.kind == io::QuantKind::kQ8 || p.slots / 16 * 128 == p.K) && (p.G == 32 || p.G == 64);
}

void amx_packed_rows(const QxOperand& x, const Packed& p, const QwOperand& w, int64_t n0, int64_t n1, float* y,
                     int64_t ldy) {
  run_tiles(x, p, w, n0, n1, y, ldy, amx_int8_emulated());
}

}  // namespace ecdlm::kernels::detail
