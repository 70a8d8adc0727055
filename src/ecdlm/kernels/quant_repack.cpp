// Quantized weights repacked into output lanes (quant_backend.h Packed) and the few-row
// AVX512-VNNI kernel over them. In a 16-row block, input slot s (4 inputs) of all 16 rows is one
// 64-byte vector, lane j = row j: a token's 4 codes at those inputs broadcast to all lanes
// (vpdpbusd's embedded broadcast), so one vpdpbusd feeds 16 outputs and each lane sums one
// (row, token) in int32 over a whole group (G / 4 instructions from the token's group bias); then
// one conversion, one scale product (16 rows' scales x the token's scalar scale) and one FMA per
// group and token: ~1.5 vector ops per 64 weight bytes and token against the 4 x 4 tiles' ~4-5.
// A block's bytes are one contiguous stream. q8 codes are stored + 128 (u8); q4 keeps its nibbles
// (low: inputs 4s .., high: 64 + 4s .. of a 128-input chunk, as the row layout).
// The packed copy is built on first use and lives as long as the weight's storage (weak
// reference), beside the row layout, which the other paths and q4's K % 128 tail still read.
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <mutex>
#include <unordered_map>

#include "ecdlm/kernels/quant.h"
#include "ecdlm/kernels/quant_backend.h"

#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace ecdlm::kernels::detail {

std::atomic<bool> g_repack{false};

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
  p->slots = q8 ? K / 4 : (K - K % io::kQ4Chunk) / 8;  // 64-byte vectors per block
  p->q.resize(static_cast<size_t>(NB * p->slots * 64));
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

// acc[m] += Σ_s (gb + v_s · x_m) · d_w · d_x over one group of NS slots starting at input k.
template <int MC, int NS, int SH>
ECDLM_PK_TARGET inline __attribute__((always_inline)) void group(__m512 (&acc)[MC], const uint8_t* v, const QxOperand& x,
                                                                  int64_t m0, int64_t k, int64_t g, __m512 dw) {
  const int64_t K = x.K, KG = K / x.G;
  const __m512i low = _mm512_set1_epi8(0x0F);
  __m512i dot[MC];
#pragma GCC unroll 8
  for (int m = 0; m < MC; ++m) dot[m] = _mm512_set1_epi32(x.gb[(m0 + m) * KG + g]);
#pragma GCC unroll 16
  for (int s = 0; s < NS; ++s) {
    __m512i w = _mm512_loadu_si512(v + s * 64);
    if constexpr (SH == 0) w = _mm512_and_si512(w, low);  // q4 low nibbles
    if constexpr (SH == 4) w = _mm512_and_si512(_mm512_srli_epi16(w, 4), low);
#pragma GCC unroll 8
    for (int m = 0; m < MC; ++m) {
      int32_t xv;
      std::memcpy(&xv, x.q + (m0 + m) * K + k + 4 * s, 4);
      dot[m] = _mm512_dpbusd_epi32(dot[m], w, _mm512_set1_epi32(xv));
    }
  }
#pragma GCC unroll 8
  for (int m = 0; m < MC; ++m)
    acc[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[m]), _mm512_mul_ps(dw, _mm512_set1_ps(x.d[(m0 + m) * KG + g])),
                             acc[m]);
}

// Block b against tokens m0 .. m0 + MC - 1: y[m * ldy + j] for rows j < rows.
template <int MC, int G>
ECDLM_PK_TARGET void block(const Packed& p, int64_t b, bool q8, const QxOperand& x, int64_t m0, int rows, float* y,
                           int64_t ldy) {
  __m512 acc[MC];
#pragma GCC unroll 8
  for (int m = 0; m < MC; ++m) acc[m] = _mm512_setzero_ps();
  const int64_t KG = p.K / G;
  const uint8_t* q = p.q.data() + b * p.slots * 64;
  const uint16_t* d = p.d.data() + b * KG * 16;
  const auto scale = [&](int64_t g) ECDLM_PK_TARGET {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(d + g * 16)));
  };
  if (q8) {
    for (int64_t g = 0; g < KG; ++g) {
      _mm_prefetch(reinterpret_cast<const char*>(q + g * G * 16 + 2048), _MM_HINT_T0);
      group<MC, G / 4, -1>(acc, q + g * G * 16, x, m0, g * G, g, scale(g));
    }
  } else {
    for (int64_t c = 0; c < p.slots / 16; ++c) {  // 128-input chunks: 16 vectors
      const uint8_t* v = q + c * 1024;
      _mm_prefetch(reinterpret_cast<const char*>(v + 2048), _MM_HINT_T0);
      for (int64_t h = 0; h < 2; ++h)  // low nibbles: inputs k .. k + 63, high: k + 64 ..
        for (int64_t s0 = 0; s0 < 16; s0 += G / 4) {
          const int64_t k = c * 128 + h * 64 + 4 * s0, g = k / G;
          if (h == 0)
            group<MC, G / 4, 0>(acc, v + s0 * 64, x, m0, k, g, scale(g));
          else
            group<MC, G / 4, 4>(acc, v + s0 * 64, x, m0, k, g, scale(g));
        }
    }
    if (!p.m.empty()) {  // q4's minimum term over every group (the K % 128 tail's too)
      const uint16_t* mn = p.m.data() + b * KG * 16;
      for (int64_t g = 0; g < KG; ++g) {
        const __m512 mv = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(mn + g * 16)));
#pragma GCC unroll 8
        for (int m = 0; m < MC; ++m) acc[m] = _mm512_fmadd_ps(mv, _mm512_set1_ps(x.c[(m0 + m) * KG + g]), acc[m]);
      }
    }
  }
  const auto mask = static_cast<__mmask16>(rows == 16 ? 0xFFFF : (1U << rows) - 1);
#pragma GCC unroll 8
  for (int m = 0; m < MC; ++m) _mm512_mask_storeu_ps(y + m * ldy, mask, acc[m]);
}

template <int G>
void block_mc(int64_t mc, const Packed& p, int64_t b, bool q8, const QxOperand& x, int64_t m0, int rows, float* y,
              int64_t ldy) {
  switch (mc) {
    case 1: return block<1, G>(p, b, q8, x, m0, rows, y, ldy);
    case 2: return block<2, G>(p, b, q8, x, m0, rows, y, ldy);
    case 3: return block<3, G>(p, b, q8, x, m0, rows, y, ldy);
    case 4: return block<4, G>(p, b, q8, x, m0, rows, y, ldy);
    case 5: return block<5, G>(p, b, q8, x, m0, rows, y, ldy);
    case 6: return block<6, G>(p, b, q8, x, m0, rows, y, ldy);
    case 7: return block<7, G>(p, b, q8, x, m0, rows, y, ldy);
    default: return block<8, G>(p, b, q8, x, m0, rows, y, ldy);
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
  std::lock_guard<std::mutex> lock(g_mu);
  auto it = g_cache.find(key);
  if (it != g_cache.end() && same(it->second, w)) return it->second.packed;  // another thread packed it meanwhile
  if (it != g_cache.end()) g_cache.erase(it);  // a freed (or other) weight's entry at the same address
  g_cache.emplace(key, Entry{w.qweight.storage().getWeakStorageImpl(), p, w.N, w.K, w.format});
  if (g_cache.size() >= g_sweep_at) {  // freed weights: release their packed copies
    for (auto i = g_cache.begin(); i != g_cache.end();) i = i->second.storage.expired() ? g_cache.erase(i) : std::next(i);
    g_sweep_at = std::max<size_t>(64, 2 * g_cache.size());
  }
  return p;
}

bool has_packed(const io::QuantWeight& w) {
  std::lock_guard<std::mutex> lock(g_mu);
  const auto it = g_cache.find(w.qweight.data_ptr());
  return it != g_cache.end() && same(it->second, w);
}

void vnni_packed_rows(const QxOperand& x, const Packed& p, const QwOperand& w, int64_t n0, int64_t n1, float* y,
                      int64_t ldy) {
  const bool q8 = w.kind == io::QuantKind::kQ8;
  for (int64_t n = n0; n < n1; n += 16) {  // n0 % 16 == 0
    const int rows = static_cast<int>(std::min<int64_t>(16, n1 - n));
    for (int64_t m0 = 0; m0 < x.M; m0 += 8) {
      const int64_t mc = std::min<int64_t>(8, x.M - m0);
      (p.G == 32 ? block_mc<32> : block_mc<64>)(mc, p, n / 16, q8, x, m0, rows, y + m0 * ldy + (n - n0), ldy);
    }
  }
  const int64_t k_tail = w.K - w.K % io::kQ4Chunk;
  if (!q8 && k_tail < w.K)
    for (int64_t n = n0; n < n1; ++n)
      for (int64_t m = 0; m < x.M; ++m) y[m * ldy + (n - n0)] += q4_tail(x, m, w, n, k_tail);
}

}  // namespace ecdlm::kernels::detail

namespace ecdlm::kernels {

void set_quant_repack(bool on) { detail::g_repack = on; }
bool quant_repack() { return detail::g_repack.load(std::memory_order_relaxed); }

void prepack_quant(const std::vector<const io::QuantWeight*>& ws) {
  if (!cpu_has_avx512_vnni()) return;  // only the vnni kernels read the copies
  at::parallel_for(0, static_cast<int64_t>(ws.size()), 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) (void)detail::packed(*ws[size_t(i)]);
  });
}

}  // namespace ecdlm::kernels
