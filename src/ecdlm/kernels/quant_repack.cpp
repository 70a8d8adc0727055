// Quantized weights repacked into output lanes (quant_backend.h Packed) and the few-row
// AVX512-VNNI kernel over them. In a 16-row block, input slot s (4 inputs) of all 16 rows is one
// 64-byte vector, lane j = row j: a token's 4 codes at those inputs broadcast to all lanes
// (vpdpbusd's embedded broadcast), so one vpdpbusd feeds 16 outputs and each lane sums one
// (row, token) in int32 over a whole group (G / 4 instructions from the token's group bias); then
// one conversion, one scale product (16 rows' scales x the token's scalar scale) and one FMA per
// group and token: ~1.5 vector ops per 64 weight bytes and token against the 4 x 4 tiles' ~4-5.
// A block's bytes are one contiguous stream. q8 codes are stored + 128 (u8); q4 keeps its nibbles
// (low: inputs 4s .., high: 64 + 4s .. of a 128-input chunk, as the row layout).
// The packed copy is built at load (prepack_quant) or on first use and lives as long as the
// weight's storage (weak reference); the row layout is then handed back to the kernel
// (release_rows), and faults back in from the file for the paths that read it (avx2, torch).
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <mutex>
#include <unordered_map>

#include "ecdlm/kernels/avx512_reduce.h"
#include "ecdlm/kernels/quant.h"
#include "ecdlm/kernels/quant_backend.h"

#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace ecdlm::kernels::detail {

std::atomic<bool> g_repack{false};
std::atomic<int64_t> g_packed_lane_min_rows{kPackedLaneMinRows};

int64_t packed_lane_min_rows() { return g_packed_lane_min_rows.load(std::memory_order_relaxed); }
void set_packed_lane_min_rows(int64_t rows) { g_packed_lane_min_rows = rows; }
std::atomic<int64_t> g_packed_pair_min_rows{kPackedPairMinRows};
int64_t packed_pair_min_rows() { return g_packed_pair_min_rows.load(std::memory_order_relaxed); }
void set_packed_pair_min_rows(int64_t rows) { g_packed_pair_min_rows = rows; }

namespace {

#define ECDLM_PK_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,f16c")))

struct Entry {
  c10::weak_intrusive_ptr<c10::StorageImpl> storage;
  std::shared_ptr<const Packed> packed;
  int64_t N = 0, K = 0;
  io::QuantFormat format;
};

// The entry belongs to w: its storage still alive and the same, and the same shape and format.
bool same(const Entry& e, const io::QuantWeight& w) {
  return !e.storage.expired() && e.storage._unsafe_get_target() == w.qweight.storage().unsafeGetStorageImpl() &&
         e.N == w.N && e.K == w.K && e.format == w.format;
}

std::mutex g_mu;
std::unordered_map<const void*, Entry> g_cache;
size_t g_sweep_at = 64;  // drop entries of freed weights when the map has doubled

std::atomic<int64_t> g_released{0};  // bytes of row layout handed back (quant_rows_released)

// Hands the whole pages inside t's bytes back to the kernel (advice: a failure changes nothing).
// Returns the bytes advised.
int64_t page_out(const torch::Tensor& t) {
  const auto page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const auto begin = reinterpret_cast<uintptr_t>(t.data_ptr());
  const uintptr_t lo = (begin + page - 1) / page * page, hi = (begin + t.nbytes()) / page * page;
  if (hi <= lo) return 0;
  return ::madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_PAGEOUT) == 0 ? static_cast<int64_t>(hi - lo) : 0;
}

// Once w's copy exists every vnni product reads it (few rows, many rows, the prefill), so its row
// layout (codes, scales, minimums) goes back to the kernel: a mapped checkpoint's clean pages leave
// memory instead of doubling it, and a later reader (the avx2 / torch paths) faults them back from
// the file. MADV_PAGEOUT never loses data: an anonymous tensor is at most swapped. q4's K % 128
// tail is read from the rows at every call: those weights keep theirs.
void release_rows(const io::QuantWeight& w) {
  if (w.format.kind != io::QuantKind::kQ8 && w.K % io::kQ4Chunk != 0) return;
  g_released += page_out(w.qweight) + page_out(w.scales) + (w.mins.defined() ? page_out(w.mins) : 0);
}

int64_t slots_of(const io::QuantWeight& w) {
  return w.format.kind == io::QuantKind::kQ8 ? w.K / 4 : (w.K - w.K % io::kQ4Chunk) / 8;
}

// Block-major: for each 16-row block, slot by slot, the 16 rows' 4-byte slots one after another,
// so every output vector is written once, in order, q8's + 128 folded in (before: 4-byte writes
// 64 bytes apart, then a second pass). Most of a copy's cost is its fresh pages: ~4 ms per MB in
// the 2-core PVM guest (page faults), hence prepack_quant before decoding.
std::shared_ptr<Packed> build(const io::QuantWeight& w) {
  auto p = std::make_shared<Packed>();
  const QwOperand o = weight_operand(w);
  const int64_t N = w.N, K = w.K, G = w.format.group, KG = K / G, NB = (N + 15) / 16;
  const bool q8 = w.format.kind == io::QuantKind::kQ8;
  p->NB = NB;
  p->K = K;
  p->G = G;
  p->slots = slots_of(w);  // 64-byte vectors per block
  p->q.resize(static_cast<size_t>(NB * p->slots * 64));  // not zeroed: every byte is written below
  p->d.assign(static_cast<size_t>(NB * KG * 16), 0);
  if (o.m) p->m.assign(static_cast<size_t>(NB * KG * 16), 0);
  const uint32_t flip = q8 ? 0x80808080U : 0U;  // q8's missing rows: code 0, i.e. 0x80 after the flip
  for (int64_t b = 0; b < NB; ++b) {
    const int64_t rows = std::min<int64_t>(16, N - b * 16);
    uint8_t* out = p->q.data() + b * p->slots * 64;
    const uint8_t* src = o.q + b * 16 * o.row_bytes;
    for (int64_t s = 0; s < p->slots; ++s, out += 64)
      for (int64_t j = 0; j < 16; ++j) {
        uint32_t v = 0;
        if (j < rows) std::memcpy(&v, src + j * o.row_bytes + 4 * s, 4);
        v ^= flip;
        std::memcpy(out + 4 * j, &v, 4);
      }
    for (int64_t j = 0; j < rows; ++j) {
      const int64_t n = b * 16 + j;
      for (int64_t g = 0; g < KG; ++g) {
        p->d[size_t((b * KG + g) * 16 + j)] = o.d[n * KG + g];
        if (o.m) p->m[size_t((b * KG + g) * 16 + j)] = o.m[n * KG + g];
      }
    }
  }
  return p;
}

// The token rows of one chunk: codes, group scales, group biases and q4's group sums, per token.
template <int MC>
struct XRows {
  const int8_t* q[MC];
  const float* d[MC];
  const int32_t* gb[MC];
  const float* c[MC];
};

// Rows m0 .. m0 + n - 1 (n <= MC; the rest stay null).
template <int MC>
XRows<MC> x_rows(const QxOperand& x, int64_t m0, int n = MC) {
  XRows<MC> r{};
  const int64_t K = x.K, KG = K / x.G;
  for (int m = 0; m < n; ++m) {
    r.q[m] = x.q + (m0 + m) * K;
    r.d[m] = x.d + (m0 + m) * KG;
    r.gb[m] = x.gb + (m0 + m) * KG;
    r.c[m] = x.c + (m0 + m) * KG;
  }
  return r;
}

// acc += w · broadcast(the 4 codes at p), the broadcast embedded in vpdpbusd's memory operand
// (GCC emits a separate vpbroadcastd otherwise: one more op per product).
ECDLM_PK_TARGET inline __attribute__((always_inline)) void dpbusd_bcast(__m512i& acc, __m512i w, const int8_t* p) {
  asm("vpdpbusd %2%{1to16%}, %1, %0" : "+v"(acc) : "v"(w), "m"(*reinterpret_cast<const int32_t*>(p)));
}

// One group of NS slots from input k: acc[m] += (gb + Σ_s v_s · x_m) · d_w · d_x,m for MC tokens.
// Each token's sum runs in PART int32 chains (slot s in chain s % PART, added at the end: integer
// sums, exact in any order): vpdpbusd's latency is ~4 times its issue interval, so one chain per
// token stalls at 1-2 tokens. SH: -1 q8 codes, 0 / 4 q4's low / high nibbles.
template <int MC, int PART, int NS, int SH>
ECDLM_PK_TARGET inline __attribute__((always_inline)) void group(__m512 (&acc)[MC], const uint8_t* v,
                                                                  const XRows<MC>& x, int64_t k, int64_t g, __m512 dw) {
  const __m512i low = _mm512_set1_epi8(0x0F);
  __m512i dot[PART][MC];
#pragma GCC unroll 8
  for (int m = 0; m < MC; ++m) {
    dot[0][m] = _mm512_set1_epi32(x.gb[m][g]);
#pragma GCC unroll 4
    for (int p = 1; p < PART; ++p) dot[p][m] = _mm512_setzero_si512();
  }
#pragma GCC unroll 16
  for (int s = 0; s < NS; ++s) {
    __m512i w = _mm512_loadu_si512(v + s * 64);
    if constexpr (SH == 0) w = _mm512_and_si512(w, low);
    if constexpr (SH == 4) w = _mm512_and_si512(_mm512_srli_epi16(w, 4), low);
#pragma GCC unroll 8
    for (int m = 0; m < MC; ++m) dpbusd_bcast(dot[s % PART][m], w, x.q[m] + k + 4 * s);
  }
#pragma GCC unroll 8
  for (int m = 0; m < MC; ++m) {
    __m512i sum = dot[0][m];
#pragma GCC unroll 4
    for (int p = 1; p < PART; ++p) sum = _mm512_add_epi32(sum, dot[p][m]);
    acc[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_mul_ps(dw, _mm512_set1_ps(x.d[m][g])), acc[m]);
  }
}

// q4's K % 128 tail group g of the block's rows (read from the row layout w, as the token-lane
// kernel does) into acc: the same int32 sum per (row, token) and the same f32 step as a packed
// group, in the same place in the order, so a row gets the token-lane kernel's bits. Scalar sums:
// a tail is at most 3 groups and LLaDA2's shapes have none.
template <int MC>
ECDLM_PK_TARGET void tail_group(__m512 (&acc)[MC], const QwOperand& w, int64_t b, int rows, const XRows<MC>& x,
                                int64_t g, __m512 dw) {
  const int64_t G = w.G, k0 = w.K - w.K % io::kQ4Chunk, half = (w.K - k0) / 2;
  alignas(64) int8_t codes[16][64];
  for (int j = 0; j < 16; ++j) {
    const uint8_t* t = w.q + (b * 16 + j) * w.row_bytes + k0 / 2;
    for (int64_t k = g * G; k < (g + 1) * G; ++k) {
      const int64_t i = k - k0;
      codes[j][k - g * G] = j < rows ? static_cast<int8_t>(i < half ? t[i] & 15 : t[i - half] >> 4) : 0;
    }
  }
#pragma GCC unroll 8
  for (int m = 0; m < MC; ++m) {
    alignas(64) int32_t sum[16];
    const int8_t* xq = x.q[m] + g * G;
    for (int j = 0; j < 16; ++j) {
      int32_t s = x.gb[m][g];
      for (int64_t i = 0; i < G; ++i) s += codes[j][i] * xq[i];
      sum[j] = s;
    }
    acc[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_load_si512(sum)), _mm512_mul_ps(dw, _mm512_set1_ps(x.d[m][g])),
                             acc[m]);
  }
}

// Block b against the chunk's MC tokens: y[m * ldy + j] for the block's rows j < rows. Blocks run
// one at a time: side by side on one thread (2 or 4 blocks, more chains per broadcast) the streams
// ran 5-10% slower from memory (BM_QuantMoeMin).
template <int MC, int PART, int G>
ECDLM_PK_TARGET void block(const Packed& p, const QwOperand& w, int64_t b, bool q8, const XRows<MC>& x, int rows,
                           float* y, int64_t ldy) {
  constexpr int NS = G / 4;
  __m512 acc[MC];
#pragma GCC unroll 8
  for (int m = 0; m < MC; ++m) acc[m] = _mm512_setzero_ps();
  const int64_t KG = p.K / G;
  const uint8_t* q = p.q.data() + b * p.slots * 64;
  const uint16_t* d = p.d.data() + b * KG * 16;
  const auto scale = [&](int64_t g) ECDLM_PK_TARGET { return half16(d + g * 16); };
  const auto prefetch = [&](const uint8_t* v, int n) {
    for (int s = 0; s < n; ++s) _mm_prefetch(reinterpret_cast<const char*>(v + kPackedPrefetch + s * 64), _MM_HINT_T0);
  };
  if (q8) {
    for (int64_t g = 0; g < KG; ++g) {
      const uint8_t* v = q + g * NS * 64;
      prefetch(v, NS);
      group<MC, PART, NS, -1>(acc, v, x, g * G, g, scale(g));
    }
  } else {
    // A 128-input chunk is 16 vectors: group g's slots are the low (inputs k .. k + 63 of the chunk)
    // or high (k + 64 ..) nibbles of vectors s0 .. s0 + NS - 1; the chunk's vectors are read twice
    // (the second time from L1).
    const int64_t KQ = p.slots / 16 * 128;  // inputs in whole chunks; the rest is tail_group's
    // q4's minimum term right after its group's scaled sum, as the token-lane kernel adds them, so
    // a row gets the same bits from either kernel (its batch decides which runs: continuous
    // batching); the K % 128 tail's groups last, also as it does.
    const uint16_t* mn = p.m.empty() ? nullptr : p.m.data() + b * KG * 16;
    const auto add_min = [&](int64_t g) ECDLM_PK_TARGET {
      const __m512 mv = half16(mn + g * 16);
#pragma GCC unroll 8
      for (int m = 0; m < MC; ++m) acc[m] = _mm512_fmadd_ps(mv, _mm512_set1_ps(x.c[m][g]), acc[m]);
    };
    for (int64_t g = 0; g < KQ / G; ++g) {
      const int64_t k = g * G, in = k % 128;
      const uint8_t* v = q + (k / 128 * 16 + (in % 64) / 4) * 64;
      if (in == 0) prefetch(v, 16);
      if (in < 64)
        group<MC, PART, NS, 0>(acc, v, x, k, g, scale(g));
      else
        group<MC, PART, NS, 4>(acc, v, x, k, g, scale(g));
      if (mn) add_min(g);
    }
    for (int64_t g = KQ / G; g < KG; ++g) {
      tail_group<MC>(acc, w, b, rows, x, g, scale(g));
      if (mn) add_min(g);
    }
  }
  const auto mask = static_cast<__mmask16>(rows == 16 ? 0xFFFF : (1U << rows) - 1);
#pragma GCC unroll 8
  for (int m = 0; m < MC; ++m) _mm512_mask_storeu_ps(y + m * ldy, mask, acc[m]);
}

// Blocks [b0, b1) against tokens m0 .. m0 + MC - 1 (rows_last: the last block's rows).
template <int MC, int PART, int G>
void run_blocks(const Packed& p, const QwOperand& w, int64_t b0, int64_t b1, bool q8, const QxOperand& xo, int64_t m0,
                int rows_last, float* y, int64_t ldy) {
  const auto x = x_rows<MC>(xo, m0);
  for (int64_t b = b0; b < b1; ++b)
    block<MC, PART, G>(p, w, b, q8, x, b + 1 == b1 ? rows_last : 16, y + (b - b0) * 16, ldy);
}

// Chains per token by token count: 4 at 1-2 tokens, 2 at 3-8 (8-16 chains).
template <int G>
void run_mc(int64_t mc, const Packed& p, const QwOperand& w, int64_t b0, int64_t b1, bool q8, const QxOperand& x,
            int64_t m0, int rows_last, float* y, int64_t ldy) {
  switch (mc) {
    case 1: return run_blocks<1, 4, G>(p, w, b0, b1, q8, x, m0, rows_last, y, ldy);
    case 2: return run_blocks<2, 4, G>(p, w, b0, b1, q8, x, m0, rows_last, y, ldy);
    case 3: return run_blocks<3, 2, G>(p, w, b0, b1, q8, x, m0, rows_last, y, ldy);
    case 4: return run_blocks<4, 2, G>(p, w, b0, b1, q8, x, m0, rows_last, y, ldy);
    case 5: return run_blocks<5, 2, G>(p, w, b0, b1, q8, x, m0, rows_last, y, ldy);
    case 6: return run_blocks<6, 2, G>(p, w, b0, b1, q8, x, m0, rows_last, y, ldy);
    case 7: return run_blocks<7, 2, G>(p, w, b0, b1, q8, x, m0, rows_last, y, ldy);
    default: return run_blocks<8, 2, G>(p, w, b0, b1, q8, x, m0, rows_last, y, ldy);
  }
}

// The fewest passes of at most 8 tokens over M rows, balanced (9 rows: 5 + 4, not 8 + 1, whose
// 1-token pass pays a weight load and nibble mask per vpdpbusd): pass i has rows(i) tokens.
struct Passes {
  int64_t n, base, extra;
  explicit Passes(int64_t M) : n((M + 7) / 8), base(M / n), extra(M % n) {}
  int64_t rows(int64_t i) const { return base + (i < extra ? 1 : 0); }
};

// Two 16-row blocks against one pass of MC tokens over group g: each token's 4 codes, broadcast
// once, feed both blocks (one broadcast per two vpdpbusd; block() pays one per vpdpbusd, where the
// broadcasts and the epilogue, not the products, bound the 8-token passes). acc [MC][2][16] holds
// the f32 sums across groups (L1). Per (row, token) the int32 group sum and the f32 steps are
// block()'s, in its order: the same bits. SH as group().
template <int MC, int G, int SH, bool MINS>
ECDLM_PK_TARGET inline __attribute__((always_inline)) void pair_group(const uint8_t* v0, const uint8_t* v1,
                                                                       const XRows<8>& x, int64_t k, int64_t g,
                                                                       const __m512 (&dw)[2], const __m512 (&mv)[2],
                                                                       float* acc) {
  constexpr int NS = G / 4;
  const __m512i low = _mm512_set1_epi8(0x0F);
  __m512i dot[2][MC];
#pragma GCC unroll 8
  for (int m = 0; m < MC; ++m) dot[0][m] = dot[1][m] = _mm512_set1_epi32(x.gb[m][g]);
#pragma GCC unroll 16
  for (int s = 0; s < NS; ++s) {
    __m512i w0 = _mm512_loadu_si512(v0 + s * 64), w1 = _mm512_loadu_si512(v1 + s * 64);
    if constexpr (SH == 0) {
      w0 = _mm512_and_si512(w0, low);
      w1 = _mm512_and_si512(w1, low);
    }
    if constexpr (SH == 4) {
      w0 = _mm512_and_si512(_mm512_srli_epi16(w0, 4), low);
      w1 = _mm512_and_si512(_mm512_srli_epi16(w1, 4), low);
    }
#pragma GCC unroll 8
    for (int m = 0; m < MC; ++m) {
      int32_t c;
      std::memcpy(&c, x.q[m] + k + 4 * s, 4);
      const __m512i xb = _mm512_set1_epi32(c);
      dot[0][m] = _mm512_dpbusd_epi32(dot[0][m], w0, xb);
      dot[1][m] = _mm512_dpbusd_epi32(dot[1][m], w1, xb);
    }
  }
#pragma GCC unroll 8
  for (int m = 0; m < MC; ++m) {
    const __m512 dx = _mm512_set1_ps(x.d[m][g]);
#pragma GCC unroll 2
    for (int b = 0; b < 2; ++b) {
      float* a = acc + (m * 2 + b) * 16;
      __m512 r = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[b][m]), _mm512_mul_ps(dw[b], dx), _mm512_loadu_ps(a));
      if constexpr (MINS) r = _mm512_fmadd_ps(mv[b], _mm512_set1_ps(x.c[m][g]), r);
      _mm512_storeu_ps(a, r);
    }
  }
}

template <int G, int SH, bool MINS>
ECDLM_PK_TARGET void pair_pass(int mc, const uint8_t* v0, const uint8_t* v1, const XRows<8>& x, int64_t k, int64_t g,
                               const __m512 (&dw)[2], const __m512 (&mv)[2], float* acc) {
  switch (mc) {
    case 1: return pair_group<1, G, SH, MINS>(v0, v1, x, k, g, dw, mv, acc);
    case 2: return pair_group<2, G, SH, MINS>(v0, v1, x, k, g, dw, mv, acc);
    case 3: return pair_group<3, G, SH, MINS>(v0, v1, x, k, g, dw, mv, acc);
    case 4: return pair_group<4, G, SH, MINS>(v0, v1, x, k, g, dw, mv, acc);
    case 5: return pair_group<5, G, SH, MINS>(v0, v1, x, k, g, dw, mv, acc);
    case 6: return pair_group<6, G, SH, MINS>(v0, v1, x, k, g, dw, mv, acc);
    case 7: return pair_group<7, G, SH, MINS>(v0, v1, x, k, g, dw, mv, acc);
    default: return pair_group<8, G, SH, MINS>(v0, v1, x, k, g, dw, mv, acc);
  }
}

// Blocks b and b + 1 (rows1: the second one's rows) against all x.M tokens, group by group and
// within a group pass by pass (passes of at most 8 tokens, balanced as vnni_packed_rows'): a
// group's 2 x G / 4 weight vectors come from memory once and from L1 for the other passes.
// Whole 128-input chunks only (q4 without a K % 128 tail).
template <int G>
ECDLM_PK_TARGET void run_pair(const Packed& p, int64_t b, bool q8, const QxOperand& xo, int rows1, float* y,
                              int64_t ldy) {
  constexpr int NS = G / 4;
  const int64_t M = xo.M, KG = p.K / G;
  thread_local std::vector<float> acc_buf;
  if (static_cast<int64_t>(acc_buf.size()) < M * 32) acc_buf.resize(static_cast<size_t>(M * 32));
  float* acc = acc_buf.data();
  std::fill(acc, acc + M * 32, 0.0F);
  const Passes ps(M);
  const int64_t passes = ps.n;
  thread_local std::vector<XRows<8>> xr;
  thread_local std::vector<int> mcs, m0s;
  xr.resize(static_cast<size_t>(passes));
  mcs.resize(static_cast<size_t>(passes));
  m0s.resize(static_cast<size_t>(passes));
  for (size_t i = 0, m0 = 0; i < static_cast<size_t>(passes); ++i) {
    mcs[i] = static_cast<int>(ps.rows(static_cast<int64_t>(i)));
    m0s[i] = static_cast<int>(m0);
    xr[i] = x_rows<8>(xo, static_cast<int64_t>(m0), mcs[i]);
    m0 += static_cast<size_t>(mcs[i]);
  }
  const uint8_t* q[2] = {p.q.data() + b * p.slots * 64, p.q.data() + (b + 1) * p.slots * 64};
  const uint16_t* d[2] = {p.d.data() + b * KG * 16, p.d.data() + (b + 1) * KG * 16};
  const bool mins = !p.m.empty();
  const uint16_t* mn[2] = {mins ? p.m.data() + b * KG * 16 : nullptr, mins ? p.m.data() + (b + 1) * KG * 16 : nullptr};
  for (int64_t g = 0; g < KG; ++g) {
    const int64_t k = g * G;
    const __m512 dw[2] = {half16(d[0] + g * 16), half16(d[1] + g * 16)};
    __m512 mv[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};
    if (mins) mv[0] = half16(mn[0] + g * 16), mv[1] = half16(mn[1] + g * 16);
    const uint8_t *v0, *v1;
    int sh = -1;
    if (q8) {
      v0 = q[0] + g * NS * 64;
      v1 = q[1] + g * NS * 64;
      for (int s = 0; s < NS; ++s) {
        _mm_prefetch(reinterpret_cast<const char*>(v0 + kPackedPrefetch + s * 64), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(v1 + kPackedPrefetch + s * 64), _MM_HINT_T0);
      }
    } else {
      const int64_t in = k % 128, at = (k / 128 * 16 + (in % 64) / 4) * 64;
      v0 = q[0] + at;
      v1 = q[1] + at;
      sh = in < 64 ? 0 : 4;
      if (in == 0)
        for (int s = 0; s < 16; ++s) {
          _mm_prefetch(reinterpret_cast<const char*>(v0 + kPackedPrefetch + s * 64), _MM_HINT_T0);
          _mm_prefetch(reinterpret_cast<const char*>(v1 + kPackedPrefetch + s * 64), _MM_HINT_T0);
        }
    }
    for (size_t i = 0; i < static_cast<size_t>(passes); ++i) {
      float* a = acc + m0s[i] * 32;
      if (sh < 0)
        pair_pass<G, -1, false>(mcs[i], v0, v1, xr[i], k, g, dw, mv, a);
      else if (mins)
        sh == 0 ? pair_pass<G, 0, true>(mcs[i], v0, v1, xr[i], k, g, dw, mv, a)
                : pair_pass<G, 4, true>(mcs[i], v0, v1, xr[i], k, g, dw, mv, a);
      else
        sh == 0 ? pair_pass<G, 0, false>(mcs[i], v0, v1, xr[i], k, g, dw, mv, a)
                : pair_pass<G, 4, false>(mcs[i], v0, v1, xr[i], k, g, dw, mv, a);
    }
  }
  const auto mask1 = static_cast<__mmask16>(rows1 == 16 ? 0xFFFF : (1U << rows1) - 1);
  for (int64_t m = 0; m < M; ++m) {
    _mm512_storeu_ps(y + m * ldy, _mm512_loadu_ps(acc + m * 32));
    _mm512_mask_storeu_ps(y + m * ldy + 16, mask1, _mm512_loadu_ps(acc + m * 32 + 16));
  }
}

}  // namespace

std::shared_ptr<const Packed> packed(const io::QuantWeight& w) {
  const void* key = w.qweight.data_ptr();
  {
    std::lock_guard<std::mutex> lock(g_mu);
    auto it = g_cache.find(key);
    if (it != g_cache.end() && same(it->second, w)) return it->second.packed;
  }
  std::shared_ptr<const Packed> p = build(w);  // outside the lock: other threads pack other weights
  {
    std::lock_guard<std::mutex> lock(g_mu);
    auto it = g_cache.find(key);
    if (it != g_cache.end() && same(it->second, w)) return it->second.packed;  // another thread packed it meanwhile
    if (it != g_cache.end()) g_cache.erase(it);  // a freed (or other) weight's entry at the same address
    g_cache.emplace(key, Entry{w.qweight.storage().getWeakStorageImpl(), p, w.N, w.K, w.format});
    if (g_cache.size() >= g_sweep_at) {  // freed weights: release their packed copies
      for (auto i = g_cache.begin(); i != g_cache.end();) i = i->second.storage.expired() ? g_cache.erase(i) : std::next(i);
      g_sweep_at = std::max<size_t>(64, 2 * g_cache.size());
    }
  }
  release_rows(w);  // system calls: outside the lock, which every product's lookup takes
  return p;
}

int64_t packed_bytes(const io::QuantWeight& w) {
  const int64_t NB = (w.N + 15) / 16, scales = NB * (w.K / w.format.group) * 16 * 2;
  return NB * slots_of(w) * 64 + scales * (w.mins.defined() && w.mins.numel() > 0 ? 2 : 1);
}

bool has_packed(const io::QuantWeight& w) {
  std::lock_guard<std::mutex> lock(g_mu);
  const auto it = g_cache.find(w.qweight.data_ptr());
  return it != g_cache.end() && same(it->second, w);
}

void vnni_packed_rows(const QxOperand& x, const Packed& p, const QwOperand& w, int64_t n0, int64_t n1, float* y,
                      int64_t ldy) {
  if (w.amx && x.M >= packed_amx_min_rows()) return amx_packed_rows(x, p, w, n0, n1, y, ldy);  // same bits
  const bool q8 = w.kind == io::QuantKind::kQ8;
  const int64_t b0 = n0 / 16, b1 = (n1 + 15) / 16;  // n0 % 16 == 0
  const int rows_last = static_cast<int>(n1 - (b1 - 1) * 16);
  const auto run = p.G == 32 ? run_mc<32> : run_mc<64>;
  const bool pairs = x.M >= packed_pair_min_rows() && (q8 || p.slots / 16 * 128 == p.K);
  if (x.M <= 8 && !pairs) return run(x.M, p, w, b0, b1, q8, x, 0, rows_last, y, ldy);
  // More than 8 tokens: block by block, every pass over the block before the next, so the block's
  // bytes (16 x K: 32 KB of q8 at K 2048) come from memory once and stay in L1 for the other passes
  // (pass by pass over all blocks, the head at 32 rows measured slower than the token lanes), in
  // balanced Passes. Each token's sums are its own: same bits.
  // From kPackedPairMinRows tokens two blocks at a time (run_pair; q4 without a K % 128 tail),
  // 1.0-1.3x at 9-32 tokens in L2 or L3 (BM_PackedPairs), 0.6-0.95x at 1-4, where the stream
  // bounds the kernel and one block at a time streams faster.
  const Passes ps(x.M);
  int64_t b = b0;
  if (pairs)
    for (; b + 1 < b1; b += 2) {
      const int rows1 = b + 2 == b1 ? rows_last : 16;
      float* yb = y + (b - b0) * 16;
      p.G == 32 ? run_pair<32>(p, b, q8, x, rows1, yb, ldy) : run_pair<64>(p, b, q8, x, rows1, yb, ldy);
    }
  for (; b < b1; ++b)
    for (int64_t i = 0, m0 = 0; i < ps.n; ++i) {
      const int64_t mc = ps.rows(i);
      run(mc, p, w, b, b + 1, q8, x, m0, b + 1 == b1 ? rows_last : 16, y + m0 * ldy + (b - b0) * 16, ldy);
      m0 += mc;
    }
}

}  // namespace ecdlm::kernels::detail

namespace ecdlm::kernels {

void set_quant_repack(bool on) { detail::g_repack = on; }
bool quant_repack() { return detail::g_repack.load(std::memory_order_relaxed); }

int64_t prepack_quant(const std::vector<const io::QuantWeight*>& ws) {
  if (!cpu_has_avx512_vnni()) return 0;  // only the vnni kernels read the copies
  int64_t bytes = 0;
  for (const auto* w : ws)
    if (!detail::has_packed(*w)) bytes += detail::packed_bytes(*w) + 3 * 64;  // + each vector's alignment
  const detail::PackArenaScope arena(static_cast<size_t>(bytes));
  const int64_t released0 = detail::g_released.load();
  at::parallel_for(0, static_cast<int64_t>(ws.size()), 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) (void)detail::packed(*ws[size_t(i)]);
  });
  return detail::g_released.load() - released0;
}

int64_t quant_rows_released() { return detail::g_released.load(); }

void reserve_quant_copies(int64_t bytes) {
  static std::once_flag once;
  std::call_once(once, [bytes] {
    static auto* scope = new detail::PackArenaScope(static_cast<size_t>(std::max<int64_t>(bytes, 0)));
    (void)scope;  // never closed: the process's first-use copies
  });
}

}  // namespace ecdlm::kernels
