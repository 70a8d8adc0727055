#include "ecdlm/kernels/norm_rope.h"

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>

#include "ecdlm/kernels/avx512_reduce.h"
#include "ecdlm/kernels/small_m.h"

// GCC 12's _mm512_reduce_add_ps passes _mm256_undefined_pd() by design: a false warning.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace ecdlm::kernels {
namespace {

bool eligible(const torch::Tensor& t) {
  return t.defined() && t.device().is_cpu() && (t.scalar_type() == torch::kFloat32 || t.scalar_type() == torch::kBFloat16) &&
         !(torch::GradMode::is_enabled() && t.requires_grad());
}

// A value as the dtype T holds it: bf16 rounds (nearest even), f32 is exact.
template <typename T>
inline float held(float v) {
  return static_cast<float>(static_cast<T>(v));
}

// Elements below which a call stays on one thread.
constexpr int64_t kSerialElems = 1 << 17;

#define ECDLM_BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

// 16 bf16 -> f32 (exact: bf16 is the high half of an f32), and f32 -> bf16 nearest-even.
ECDLM_BF16_TARGET inline __m512 load16(const c10::BFloat16* p, __mmask16 m) { return detail::load_bf16(p, m); }
ECDLM_BF16_TARGET inline __m512 round16(__m512 v) {  // the value the bf16 rounding of v holds
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(v)), 16));
}
ECDLM_BF16_TARGET inline void store16(c10::BFloat16* p, __mmask16 m, __m512 v) {
  _mm256_mask_storeu_epi16(p, m, (__m256i)_mm512_cvtneps_pbh(v));
}
using detail::tail_mask;

ECDLM_BF16_TARGET void rms_norm_rows_avx512(const c10::BFloat16* x, const c10::BFloat16* w, c10::BFloat16* y,
                                            int64_t rows, int64_t D, float eps) {
  for (int64_t r = 0; r < rows; ++r) {
    const c10::BFloat16* xr = x + r * D;
    c10::BFloat16* yr = y + r * D;
    __m512 ss = _mm512_setzero_ps();
    for (int64_t d = 0; d < D; d += 16) {
      const __m512 v = load16(xr + d, tail_mask(D - d));
      ss = _mm512_fmadd_ps(v, v, ss);
    }
    const __m512 inv = _mm512_set1_ps(1.0F / std::sqrt(_mm512_reduce_add_ps(ss) / static_cast<float>(D) + eps));
    for (int64_t d = 0; d < D; d += 16) {
      const auto m = tail_mask(D - d);
      store16(yr + d, m, _mm512_mul_ps(load16(w + d, m), round16(_mm512_mul_ps(load16(xr + d, m), inv))));
    }
  }
}

ECDLM_BF16_TARGET void rope_rows_avx512(const c10::BFloat16* x, const c10::BFloat16* cos, const c10::BFloat16* sin,
                                        c10::BFloat16* y, int64_t i0, int64_t i1, int64_t L, int64_t H, int64_t hd,
                                        int64_t rd) {
  const int64_t half = rd / 2;
  for (int64_t i = i0; i < i1; ++i) {
    const int64_t l = (i / H) % L;
    const c10::BFloat16* xr = x + i * hd;
    c10::BFloat16* yr = y + i * hd;
    for (int64_t j = 0; j < half; j += 16) {
      const auto m = tail_mask(half - j);
      const __m512 x1 = load16(xr + j, m), x2 = load16(xr + half + j, m);
      const __m512 c = load16(cos + l * half + j, m), s = load16(sin + l * half + j, m);
      store16(yr + j, m, _mm512_sub_ps(round16(_mm512_mul_ps(x1, c)), round16(_mm512_mul_ps(x2, s))));
      store16(yr + half + j, m, _mm512_add_ps(round16(_mm512_mul_ps(x2, c)), round16(_mm512_mul_ps(x1, s))));
    }
    for (int64_t j = rd; j < hd; ++j) yr[j] = xr[j];
  }
}

template <typename T>
void rms_norm_rows(const T* x, const T* w, T* y, int64_t rows, int64_t D, float eps) {
  at::parallel_for(0, rows, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* xr = x + r * D;
      T* yr = y + r * D;
      float ss = 0.0F;
      for (int64_t d = 0; d < D; ++d) {
        const float v = static_cast<float>(xr[d]);
        ss += v * v;
      }
      const float inv = 1.0F / std::sqrt(ss / static_cast<float>(D) + eps);
      // normed is cast to T, then T * T (computed in f32, rounded to T) as torch does.
      for (int64_t d = 0; d < D; ++d)
        yr[d] = static_cast<T>(static_cast<float>(w[d]) * held<T>(static_cast<float>(xr[d]) * inv));
    }
  });
}

template <typename T>
void rope_rows(const T* x, const T* cos, const T* sin, T* y, int64_t BLH, int64_t L, int64_t H, int64_t hd, int64_t rd) {
  const int64_t half = rd / 2;
  at::parallel_for(0, BLH, 64, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {  // i = (b * L + l) * H + h over [B, L, H]; l picks the table row
      const int64_t l = (i / H) % L;
      const T* xr = x + i * hd;
      T* yr = y + i * hd;
      const T* c = cos + l * half;
      const T* s = sin + l * half;
      for (int64_t j = 0; j < half; ++j) {
        const float x1 = static_cast<float>(xr[j]), x2 = static_cast<float>(xr[j + half]);
        const float cj = static_cast<float>(c[j]), sj = static_cast<float>(s[j]);
        // Each torch op rounds to T: x1*cos, x2*sin, their difference; x2*cos, x1*sin, the sum.
        yr[j] = static_cast<T>(held<T>(x1 * cj) - held<T>(x2 * sj));
        yr[j + half] = static_cast<T>(held<T>(x2 * cj) + held<T>(x1 * sj));
      }
      for (int64_t j = rd; j < hd; ++j) yr[j] = xr[j];
    }
  });
}

}  // namespace

torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& w, double eps) {
  if (!eligible(x) || x.scalar_type() != torch::kBFloat16 || !eligible(w) || w.scalar_type() != x.scalar_type() ||
      x.dim() < 1 || w.dim() != 1 ||
      w.size(0) != x.size(-1) || x.numel() == 0)
    return {};
  const auto xc = x.contiguous(), wc = w.contiguous();
  auto y = torch::empty_like(xc);
  const int64_t D = x.size(-1), rows = x.numel() / D;
  const auto* xp = xc.data_ptr<c10::BFloat16>();
  const auto* wp = wc.data_ptr<c10::BFloat16>();
  auto* yp = y.data_ptr<c10::BFloat16>();
  if (cpu_has_avx512_bf16())  // threads only for large inputs: a fork costs more than 32 rows
    at::parallel_for(0, rows, std::max<int64_t>(1, kSerialElems / D), [&](int64_t r0, int64_t r1) {
      rms_norm_rows_avx512(xp + r0 * D, wp, yp + r0 * D, r1 - r0, D, static_cast<float>(eps));
    });
  else
    rms_norm_rows(xp, wp, yp, rows, D, static_cast<float>(eps));
  return y;
}

torch::Tensor rope(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin, int64_t rd) {
  if (!eligible(x) || !eligible(cos) || !eligible(sin) || x.dim() != 4 || cos.scalar_type() != x.scalar_type() ||
      sin.scalar_type() != x.scalar_type() || rd <= 0 || rd % 2 || rd > x.size(3) || cos.numel() != x.size(1) * rd / 2 ||
      sin.numel() != cos.numel() || x.numel() == 0)
    return {};
  const auto xc = x.contiguous(), cc = cos.contiguous(), sc = sin.contiguous();
  auto y = torch::empty_like(xc);
  const int64_t L = x.size(1), H = x.size(2), hd = x.size(3), BLH = x.size(0) * L * H;
  if (x.scalar_type() == torch::kFloat32)
    rope_rows(xc.data_ptr<float>(), cc.data_ptr<float>(), sc.data_ptr<float>(), y.data_ptr<float>(), BLH, L, H, hd, rd);
  else if (cpu_has_avx512_bf16())
    at::parallel_for(0, BLH, std::max<int64_t>(1, kSerialElems / hd), [&](int64_t i0, int64_t i1) {
      rope_rows_avx512(xc.data_ptr<c10::BFloat16>(), cc.data_ptr<c10::BFloat16>(), sc.data_ptr<c10::BFloat16>(),
                       y.data_ptr<c10::BFloat16>(), i0, i1, L, H, hd, rd);
    });
  else
    rope_rows(xc.data_ptr<c10::BFloat16>(), cc.data_ptr<c10::BFloat16>(), sc.data_ptr<c10::BFloat16>(),
              y.data_ptr<c10::BFloat16>(), BLH, L, H, hd, rd);
  return y;
}

}  // namespace ecdlm::kernels
