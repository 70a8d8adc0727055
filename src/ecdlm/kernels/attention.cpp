#include "ecdlm/kernels/attention.h"

#include <ATen/Parallel.h>
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "ecdlm/kernels/avx512_reduce.h"
#include "ecdlm/kernels/convert.h"
#include "ecdlm/kernels/small_m.h"

// GCC 12's AVX-512 intrinsics pass _mm512_undefined_ps() as the unused merge source, which its
// flow analysis reports as uninitialized (as in gemm_avx512.cpp).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace ecdlm::kernels {
namespace {

constexpr int64_t kKeyBlock = 64;  // keys per score tile (4 vectors of 16)
constexpr int64_t kRowTile = 4;    // query rows per register tile
constexpr int64_t kChunkRows = 32; // query rows (positions x GQA group) per work item

int num_threads() { return at::in_parallel_region() ? 1 : at::get_num_threads(); }

// One source of K or V rows: element (row j, dim d) at p[j * ld + d], f32 or bf16.
struct Src {
  const void* p = nullptr;
  int64_t ld = 0;
  bool bf16 = false;
  bool round = false;  // an f32 cache read by a bf16 call: round as `.to(bf16)` would
};

// dst[c * ld + i] = src[i][c] for a 16 x 16 block (rows src[0..15], 16 floats each): unpack
// pairs of rows, then 4 x 4 blocks within 128-bit lanes, then lanes across registers.
__attribute__((target("avx512f"))) void transpose16(const float* const* src, float* dst, int64_t ld) {
  __m512 r[16], t[16], u[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(src[i]);
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  // u[4g + k], lane L: column 4L + k of rows 4g..4g+3.
  for (int g = 0; g < 4; ++g) {
    u[4 * g] = _mm512_shuffle_ps(t[4 * g], t[4 * g + 2], 0x44);
    u[4 * g + 1] = _mm512_shuffle_ps(t[4 * g], t[4 * g + 2], 0xEE);
    u[4 * g + 2] = _mm512_shuffle_ps(t[4 * g + 1], t[4 * g + 3], 0x44);
    u[4 * g + 3] = _mm512_shuffle_ps(t[4 * g + 1], t[4 * g + 3], 0xEE);
  }
  for (int k = 0; k < 4; ++k) {
    const __m512 v = _mm512_shuffle_f32x4(u[k], u[4 + k], 0x88), w = _mm512_shuffle_f32x4(u[k], u[4 + k], 0xDD);
    const __m512 v2 = _mm512_shuffle_f32x4(u[8 + k], u[12 + k], 0x88),
                 w2 = _mm512_shuffle_f32x4(u[8 + k], u[12 + k], 0xDD);
    _mm512_storeu_ps(dst + k * ld, _mm512_shuffle_f32x4(v, v2, 0x88));
    _mm512_storeu_ps(dst + (8 + k) * ld, _mm512_shuffle_f32x4(v, v2, 0xDD));
    _mm512_storeu_ps(dst + (4 + k) * ld, _mm512_shuffle_f32x4(w, w2, 0x88));
    _mm512_storeu_ps(dst + (12 + k) * ld, _mm512_shuffle_f32x4(w, w2, 0xDD));
  }
}

struct Scratch {
  std::vector<float> kt, v, q, s, o;
  std::vector<const float*> kp, vp;  // key j's K / V row (f32)
  std::vector<int64_t> vis;
  static float* grow(std::vector<float>& b, int64_t n) {
    if (static_cast<int64_t>(b.size()) < n) b.resize(static_cast<size_t>(n));
    return b.data();
  }
};

using detail::hmax;
using detail::tail_mask;

// s[r][j] = q[r] · kt[:, j] for 4 query rows and keys [0, nk) rounded up to kKeyBlock; the sum
// over d runs in order 0..hd-1 for every (row, key), whichever rows share the tile.
__attribute__((target("avx512f"))) void score_tile(const float* q, int64_t hd, const float* kt, int64_t ld_kt,
                                                    int64_t nk, float* s, int64_t ld_s) {
  const float *q0 = q, *q1 = q + hd, *q2 = q + 2 * hd, *q3 = q + 3 * hd;
  for (int64_t j0 = 0; j0 < nk; j0 += kKeyBlock) {
    // 16 accumulators in registers: rows 0-3 x 4 vectors of 16 keys.
    __m512 a00 = _mm512_setzero_ps(), a01 = a00, a02 = a00, a03 = a00, a10 = a00, a11 = a00, a12 = a00, a13 = a00,
           a20 = a00, a21 = a00, a22 = a00, a23 = a00, a30 = a00, a31 = a00, a32 = a00, a33 = a00;
    for (int64_t d = 0; d < hd; ++d) {
      const float* k = kt + d * ld_kt + j0;
      const __m512 k0 = _mm512_loadu_ps(k), k1 = _mm512_loadu_ps(k + 16), k2 = _mm512_loadu_ps(k + 32),
                   k3 = _mm512_loadu_ps(k + 48);
      __m512 x = _mm512_set1_ps(q0[d]);
      a00 = _mm512_fmadd_ps(x, k0, a00), a01 = _mm512_fmadd_ps(x, k1, a01), a02 = _mm512_fmadd_ps(x, k2, a02),
      a03 = _mm512_fmadd_ps(x, k3, a03);
      x = _mm512_set1_ps(q1[d]);
      a10 = _mm512_fmadd_ps(x, k0, a10), a11 = _mm512_fmadd_ps(x, k1, a11), a12 = _mm512_fmadd_ps(x, k2, a12),
      a13 = _mm512_fmadd_ps(x, k3, a13);
      x = _mm512_set1_ps(q2[d]);
      a20 = _mm512_fmadd_ps(x, k0, a20), a21 = _mm512_fmadd_ps(x, k1, a21), a22 = _mm512_fmadd_ps(x, k2, a22),
      a23 = _mm512_fmadd_ps(x, k3, a23);
      x = _mm512_set1_ps(q3[d]);
      a30 = _mm512_fmadd_ps(x, k0, a30), a31 = _mm512_fmadd_ps(x, k1, a31), a32 = _mm512_fmadd_ps(x, k2, a32),
      a33 = _mm512_fmadd_ps(x, k3, a33);
    }
    float* o = s + j0;
    _mm512_storeu_ps(o, a00), _mm512_storeu_ps(o + 16, a01), _mm512_storeu_ps(o + 32, a02), _mm512_storeu_ps(o + 48, a03);
    o += ld_s;
    _mm512_storeu_ps(o, a10), _mm512_storeu_ps(o + 16, a11), _mm512_storeu_ps(o + 32, a12), _mm512_storeu_ps(o + 48, a13);
    o += ld_s;
    _mm512_storeu_ps(o, a20), _mm512_storeu_ps(o + 16, a21), _mm512_storeu_ps(o + 32, a22), _mm512_storeu_ps(o + 48, a23);
    o += ld_s;
    _mm512_storeu_ps(o, a30), _mm512_storeu_ps(o + 16, a31), _mm512_storeu_ps(o + 32, a32), _mm512_storeu_ps(o + 48, a33);
  }
}

// In place over s[0, end) (end >= n, rounded up to 16 within the row): p_j = exp(scale s_j - max)
// for j < n, 0 beyond; returns sum_j p_j (16 lane sums over the keys in order, one fixed reduction).
__attribute__((target("avx512f"))) float softmax_row(float* s, int64_t n, int64_t end, float scale) {
  const __m512 sc = _mm512_set1_ps(scale);
  __m512 mx = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 m = tail_mask(n - j);
    mx = _mm512_mask_max_ps(mx, m, mx, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, s + j), sc));
  }
  const __m512 mv = _mm512_set1_ps(hmax(mx));
  __m512 sum = _mm512_setzero_ps();
  for (int64_t j = 0; j < end; j += 16) {
    const __mmask16 m = tail_mask(n - j);
    const __m512 e = _mm512_maskz_mov_ps(m, detail::exp_ps(_mm512_sub_ps(_mm512_mul_ps(_mm512_loadu_ps(s + j), sc), mv)));
    _mm512_storeu_ps(s + j, e);
    sum = _mm512_add_ps(sum, e);
  }
  return detail::hsum_ordered(sum);
}

// out[r][d] = inv[r] * sum_{j < nk} p[r][j] v[j][d] for 4 rows (p is 0 past a row's keys, so the
// extra terms add exact zeros), keys in order; v[j] is key j's value row.
__attribute__((target("avx512f"))) void value_tile(const float* p, int64_t ld_p, int64_t nk, const float* const* v,
                                                    int64_t hd, const float* inv, float* out, int64_t ld_out,
                                                    int64_t rows) {
  const float *p0 = p, *p1 = p + ld_p, *p2 = p + 2 * ld_p, *p3 = p + 3 * ld_p;
  for (int64_t d0 = 0; d0 < hd; d0 += 64) {
    const __mmask16 m0 = tail_mask(hd - d0), m1 = tail_mask(hd - d0 - 16), m2 = tail_mask(hd - d0 - 32),
                    m3 = tail_mask(hd - d0 - 48);
    __m512 a00 = _mm512_setzero_ps(), a01 = a00, a02 = a00, a03 = a00, a10 = a00, a11 = a00, a12 = a00, a13 = a00,
           a20 = a00, a21 = a00, a22 = a00, a23 = a00, a30 = a00, a31 = a00, a32 = a00, a33 = a00;
    for (int64_t j = 0; j < nk; ++j) {
      const float* vj = v[j] + d0;
      const __m512 v0 = _mm512_maskz_loadu_ps(m0, vj), v1 = _mm512_maskz_loadu_ps(m1, vj + 16),
                   v2 = _mm512_maskz_loadu_ps(m2, vj + 32), v3 = _mm512_maskz_loadu_ps(m3, vj + 48);
      __m512 x = _mm512_set1_ps(p0[j]);
      a00 = _mm512_fmadd_ps(x, v0, a00), a01 = _mm512_fmadd_ps(x, v1, a01), a02 = _mm512_fmadd_ps(x, v2, a02),
      a03 = _mm512_fmadd_ps(x, v3, a03);
      x = _mm512_set1_ps(p1[j]);
      a10 = _mm512_fmadd_ps(x, v0, a10), a11 = _mm512_fmadd_ps(x, v1, a11), a12 = _mm512_fmadd_ps(x, v2, a12),
      a13 = _mm512_fmadd_ps(x, v3, a13);
      x = _mm512_set1_ps(p2[j]);
      a20 = _mm512_fmadd_ps(x, v0, a20), a21 = _mm512_fmadd_ps(x, v1, a21), a22 = _mm512_fmadd_ps(x, v2, a22),
      a23 = _mm512_fmadd_ps(x, v3, a23);
      x = _mm512_set1_ps(p3[j]);
      a30 = _mm512_fmadd_ps(x, v0, a30), a31 = _mm512_fmadd_ps(x, v1, a31), a32 = _mm512_fmadd_ps(x, v2, a32),
      a33 = _mm512_fmadd_ps(x, v3, a33);
    }
    const __m512 acc[kRowTile][4] = {{a00, a01, a02, a03}, {a10, a11, a12, a13}, {a20, a21, a22, a23}, {a30, a31, a32, a33}};
    const __mmask16 dm[4] = {m0, m1, m2, m3};
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t k = 0; k < 4; ++k)
        _mm512_mask_storeu_ps(out + r * ld_out + d0 + 16 * k, dm[k], _mm512_mul_ps(acc[r][k], _mm512_set1_ps(inv[r])));
  }
}

struct Call {
  const torch::Tensor *q, *k, *v;
  const std::vector<AttnRow>* rows;
  const std::vector<int64_t>* visible;
  int64_t H, Hkv, hd, group;
  bool bf16;
  float scale;
  float* out;  // [N, H, hd] f32
};

struct Item {
  int64_t row, h, i0, i1;
};

Src new_src(const torch::Tensor& t, int64_t row0, int64_t h, int64_t Hkv, int64_t hd, bool bf16) {
  const int64_t off = (row0 * Hkv + h) * hd;
  Src s;
  s.bf16 = bf16;
  s.ld = Hkv * hd;
  s.p = bf16 ? static_cast<const void*>(static_cast<const uint16_t*>(t.data_ptr()) + off)
             : static_cast<const void*>(t.data_ptr<float>() + off);
  return s;
}

Src cache_src(const torch::Tensor& c_HPd, int64_t h, int64_t hd, bool call_bf16) {
  Src s;
  s.bf16 = c_HPd.scalar_type() == torch::kBFloat16;
  s.round = call_bf16 && !s.bf16;
  const int64_t P = c_HPd.size(1), off = h * P * hd;
  s.ld = hd;
  s.p = s.bf16 ? static_cast<const void*>(static_cast<const uint16_t*>(c_HPd.data_ptr()) + off)
               : static_cast<const void*>(c_HPd.data_ptr<float>() + off);
  return s;
}

void run_item(const Call& c, const Item& it, Scratch& w) {
  const AttnRow& row = (*c.rows)[static_cast<size_t>(it.row)];
  const int64_t hd = c.hd, P = row.cached(), npos = it.i1 - it.i0, R = npos * c.group;
  const int64_t Rpad = (R + kRowTile - 1) / kRowTile * kRowTile;
  int64_t nmax = 0;
  for (int64_t i = it.i0; i < it.i1; ++i) nmax = std::max(nmax, (*c.visible)[static_cast<size_t>(row.row0 + i)]);
  const int64_t spad = (nmax + kKeyBlock - 1) / kKeyBlock * kKeyBlock;
  // Key j's K and V rows as f32 (cache rows, then new rows): f32 sources read in place, others
  // converted once into scratch; K is then transposed to [hd][spad] (zero past nmax).
  const Src kn = new_src(*c.k, row.row0, it.h, c.Hkv, hd, c.bf16), vn = new_src(*c.v, row.row0, it.h, c.Hkv, hd, c.bf16);
  Src kc, vc;
  if (P > 0) {
    kc = cache_src(row.k_HPd, it.h, hd, c.bf16);
    vc = cache_src(row.v_HPd, it.h, hd, c.bf16);
  }
  w.kp.resize(static_cast<size_t>(nmax));
  w.vp.resize(static_cast<size_t>(nmax));
  float* conv = Scratch::grow(w.v, 2 * nmax * hd);
  auto row_ptr = [&](const Src& src, int64_t jj, float* buf) -> const float* {
    if (!src.bf16 && !src.round) return static_cast<const float*>(src.p) + jj * src.ld;
    if (src.bf16) {
      bf16_to_f32(static_cast<const uint16_t*>(src.p) + jj * src.ld, hd, buf);
    } else {
      const float* f = static_cast<const float*>(src.p) + jj * src.ld;
      for (int64_t d = 0; d < hd; ++d) buf[d] = static_cast<float>(c10::BFloat16(f[d]));
    }
    return buf;
  };
  for (int64_t j = 0; j < nmax; ++j) {
    const bool cached = j < P;
    const int64_t jj = cached ? j : j - P;
    w.kp[static_cast<size_t>(j)] = row_ptr(cached ? kc : kn, jj, conv + 2 * j * hd);
    w.vp[static_cast<size_t>(j)] = row_ptr(cached ? vc : vn, jj, conv + (2 * j + 1) * hd);
  }
  float* kt = Scratch::grow(w.kt, hd * spad);
  const int64_t n16 = nmax / 16 * 16, hd16 = hd / 16 * 16;
  for (int64_t j0 = 0; j0 < n16; j0 += 16) {
    const float* src[16];
    for (int64_t d0 = 0; d0 < hd16; d0 += 16) {
      for (int64_t i = 0; i < 16; ++i) src[i] = w.kp[static_cast<size_t>(j0 + i)] + d0;
      transpose16(src, kt + d0 * spad + j0, spad);
    }
    for (int64_t d = hd16; d < hd; ++d)
      for (int64_t j = j0; j < j0 + 16; ++j) kt[d * spad + j] = w.kp[static_cast<size_t>(j)][d];
  }
  for (int64_t d = 0; d < hd; ++d)
    for (int64_t j = n16; j < nmax; ++j) kt[d * spad + j] = w.kp[static_cast<size_t>(j)][d];
  for (int64_t d = 0; d < hd; ++d) std::fill(kt + d * spad + nmax, kt + (d + 1) * spad, 0.0F);
  // Query rows r = (i - i0) * group + g (query head h * group + g), zero rows padding to the tile.
  float* q = Scratch::grow(w.q, Rpad * hd);
  float* s = Scratch::grow(w.s, Rpad * spad);
  if (static_cast<int64_t>(w.vis.size()) < Rpad) w.vis.resize(static_cast<size_t>(Rpad));
  const int64_t ldq = c.H * hd;
  for (int64_t r = 0; r < Rpad; ++r) {
    float* qr = q + r * hd;
    if (r >= R) {
      std::fill(qr, qr + hd, 0.0F);
      w.vis[static_cast<size_t>(r)] = 0;
      continue;
    }
    const int64_t i = it.i0 + r / c.group, hq = it.h * c.group + r % c.group;
    const int64_t off = (row.row0 + i) * ldq + hq * hd;
    if (c.bf16) {
      const auto* src = static_cast<const uint16_t*>(c.q->data_ptr()) + off;
      bf16_to_f32(src, hd, qr);
    } else {
      std::memcpy(qr, c.q->data_ptr<float>() + off, static_cast<size_t>(hd) * sizeof(float));
    }
    w.vis[static_cast<size_t>(r)] = (*c.visible)[static_cast<size_t>(row.row0 + i)];
  }
  for (int64_t r0 = 0; r0 < R; r0 += kRowTile) {
    int64_t nk = 0;
    for (int64_t r = r0; r < r0 + kRowTile; ++r) nk = std::max(nk, w.vis[static_cast<size_t>(r)]);
    score_tile(q + r0 * hd, hd, kt, spad, nk, s + r0 * spad, spad);
    float inv[kRowTile] = {0, 0, 0, 0};
    for (int64_t r = r0; r < std::min(R, r0 + kRowTile); ++r)
      inv[r - r0] = 1.0F / softmax_row(s + r * spad, w.vis[static_cast<size_t>(r)], nk, c.scale);
    for (int64_t r = std::min(R, r0 + kRowTile); r < r0 + kRowTile; ++r) std::fill(s + r * spad, s + r * spad + nk, 0.0F);
    // Output rows of a tile are not contiguous in out (query heads interleave): a small buffer.
    float* o = Scratch::grow(w.o, kRowTile * hd);
    const int64_t rows = std::min<int64_t>(kRowTile, R - r0);
    value_tile(s + r0 * spad, spad, nk, w.vp.data(), hd, inv, o, hd, rows);
    for (int64_t r = r0; r < r0 + rows; ++r) {
      const int64_t i = it.i0 + r / c.group, hq = it.h * c.group + r % c.group;
      std::memcpy(c.out + (row.row0 + i) * ldq + hq * hd, o + (r - r0) * hd, static_cast<size_t>(hd) * sizeof(float));
    }
  }
}

bool plain(const torch::Tensor& t, torch::ScalarType dt) {
  return t.defined() && t.scalar_type() == dt && t.is_contiguous() && t.device().is_cpu() &&
         !(torch::GradMode::is_enabled() && t.requires_grad());
}

}  // namespace

bool decode_attention_enabled() {
  static const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                             __builtin_cpu_supports("avx512vl");
  return avx512 && f32_tiles_active() && small_m_backend() != SmallM::kTorch;
}

std::vector<int64_t> block_causal_visible(int64_t p0, int64_t L, int64_t block) {
  std::vector<int64_t> vis(static_cast<size_t>(std::max<int64_t>(L, 0)), p0 + L);
  if (block > 0)
    for (int64_t i = 0; i < L; ++i) vis[static_cast<size_t>(i)] = std::min(p0 + L, ((p0 + i) / block + 1) * block);
  return vis;
}

bool visible_from_mask(const torch::Tensor& mask_LS, int64_t L, int64_t S, std::vector<int64_t>& visible) {
  visible.assign(static_cast<size_t>(L), S);
  if (!mask_LS.defined()) return true;
  if (mask_LS.dim() != 2 || mask_LS.size(0) != L || mask_LS.size(1) != S || mask_LS.scalar_type() != torch::kFloat32)
    return false;
  const auto m = mask_LS.contiguous();
  const float* p = m.data_ptr<float>();
  for (int64_t i = 0; i < L; ++i) {
    const float* r = p + i * S;
    int64_t n = 0;
    while (n < S && r[n] == 0.0F) ++n;
    if (n == 0) return false;
    for (int64_t j = n; j < S; ++j)
      if (!(std::isinf(r[j]) && r[j] < 0)) return false;
    visible[static_cast<size_t>(i)] = n;
  }
  return true;
}

bool decode_attention_applies(const torch::Tensor& q_NHd, const torch::Tensor& k_NKd, const torch::Tensor& v_NKd,
                              const std::vector<AttnRow>& rows, const std::vector<int64_t>& visible) {
  if (!decode_attention_enabled() || !q_NHd.defined() || q_NHd.dim() != 3) return false;
  const auto dt = q_NHd.scalar_type();
  if (dt != torch::kFloat32 && dt != torch::kBFloat16) return false;
  if (!plain(q_NHd, dt) || !plain(k_NKd, dt) || !plain(v_NKd, dt) || k_NKd.dim() != 3 || v_NKd.sizes() != k_NKd.sizes())
    return false;
  const int64_t N = q_NHd.size(0), H = q_NHd.size(1), hd = q_NHd.size(2), Hkv = k_NKd.size(1);
  if (N < 1 || hd < 1 || Hkv < 1 || H % Hkv != 0 || k_NKd.size(0) != N || k_NKd.size(2) != hd ||
      static_cast<int64_t>(visible.size()) != N)
    return false;
  int64_t next = 0;
  for (const auto& r : rows) {
    if (r.row0 != next || r.len < 1) return false;
    next += r.len;
    const int64_t P = r.cached();
    if (P > 0) {
      const auto cdt = r.k_HPd.scalar_type();
      if ((cdt != torch::kFloat32 && cdt != torch::kBFloat16) || !plain(r.k_HPd, cdt) || !plain(r.v_HPd, cdt) ||
          r.k_HPd.dim() != 3 || r.k_HPd.size(0) != Hkv || r.k_HPd.size(2) != hd || r.v_HPd.sizes() != r.k_HPd.sizes())
        return false;
    }
    for (int64_t i = 0; i < r.len; ++i) {
      const int64_t n = visible[static_cast<size_t>(r.row0 + i)];
      if (n < 1 || n > P + r.len) return false;
    }
  }
  return next == N;
}

torch::Tensor decode_attention(const torch::Tensor& q_NHd, const torch::Tensor& k_NKd, const torch::Tensor& v_NKd,
                               const std::vector<AttnRow>& rows, const std::vector<int64_t>& visible, double scale) {
  TORCH_CHECK(decode_attention_applies(q_NHd, k_NKd, v_NKd, rows, visible),
              "decode_attention: inputs the kernel does not take");
  const int64_t N = q_NHd.size(0), H = q_NHd.size(1), hd = q_NHd.size(2), Hkv = k_NKd.size(1);
  auto out = torch::empty({N, H, hd}, torch::kFloat32);
  Call c{&q_NHd, &k_NKd, &v_NKd, &rows, &visible, H, Hkv, hd, H / Hkv, q_NHd.scalar_type() == torch::kBFloat16,
         static_cast<float>(scale), out.data_ptr<float>()};
  // Work items: (row, K/V head, chunk of positions). Whole rows when there are enough (rows x
  // K/V heads) pairs for the threads: each item converts and transposes its keys once. Otherwise
  // chunks of about kChunkRows query rows, so one row still spreads over the threads.
  const int nt = num_threads();
  const bool split = static_cast<int64_t>(rows.size()) * Hkv < 2 * static_cast<int64_t>(nt);
  const int64_t chunk = split ? std::max<int64_t>(1, kChunkRows / c.group) : N;
  std::vector<Item> items;
  for (size_t r = 0; r < rows.size(); ++r)
    for (int64_t h = 0; h < Hkv; ++h)
      for (int64_t i0 = 0; i0 < rows[r].len; i0 += chunk)
        items.push_back({static_cast<int64_t>(r), h, i0, std::min(rows[r].len, i0 + chunk)});
  const auto n_items = static_cast<int64_t>(items.size());
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
  for (int64_t t = 0; t < n_items; ++t) {
    thread_local Scratch w;
    run_item(c, items[static_cast<size_t>(t)], w);
  }
  return c.bf16 ? out.to(torch::kBFloat16) : out;
}

}  // namespace ecdlm::kernels
