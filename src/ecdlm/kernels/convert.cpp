#include "ecdlm/kernels/convert.h"

#include <immintrin.h>

#include <atomic>
#include <cstring>

#include "ecdlm/kernels/avx512_reduce.h"

// GCC 12's AVX-512 intrinsics pass an undefined merge source: a false -Wuninitialized.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

// Products and sums stay apart: GCC would otherwise contract them, intrinsics included, into a
// fused multiply-add, which rounds once where torch rounds twice.
#pragma GCC optimize("fp-contract=off")

namespace ecdlm::kernels {
namespace {

#define ECDLM_CV_TARGET __attribute__((target("avx512f,avx512bw,avx512vl")))

std::atomic<bool> g_vector{true};

bool avx512() {
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl");
  return has && g_vector.load(std::memory_order_relaxed);
}

using detail::load_bf16;
using detail::tail_mask;

ECDLM_CV_TARGET void bf16_to_f32_avx512(const uint16_t* x, int64_t n, float* y) {
  for (int64_t i = 0; i < n; i += 16) {
    const auto m = tail_mask(n - i);
    _mm512_mask_storeu_ps(y + i, m, load_bf16(x + i, m));
  }
}

ECDLM_CV_TARGET void add_scaled_avx512(const uint16_t* y, float g, int64_t n, float* o) {
  const __m512 gv = _mm512_set1_ps(g);
  for (int64_t i = 0; i < n; i += 16) {
    const auto m = tail_mask(n - i);
    const __m512 prod = _mm512_mul_ps(load_bf16(y + i, m), gv);
    _mm512_mask_storeu_ps(o + i, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, o + i), prod));
  }
}

ECDLM_CV_TARGET void add_scaled_avx512(const float* y, float g, int64_t n, float* o) {
  const __m512 gv = _mm512_set1_ps(g);
  for (int64_t i = 0; i < n; i += 16) {
    const auto m = tail_mask(n - i);
    const __m512 prod = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, y + i), gv);
    _mm512_mask_storeu_ps(o + i, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, o + i), prod));
  }
}

float bf16_value(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

void add_scaled_scalar(const uint16_t* y, float g, int64_t n, float* o) {
  for (int64_t i = 0; i < n; ++i) {
    const float prod = bf16_value(y[i]) * g;
    o[i] = o[i] + prod;
  }
}
void add_scaled_scalar(const float* y, float g, int64_t n, float* o) {
  for (int64_t i = 0; i < n; ++i) {
    const float prod = y[i] * g;
    o[i] = o[i] + prod;
  }
}

}  // namespace

void detail::set_convert_vector(bool on) { g_vector = on; }

void bf16_to_f32(const uint16_t* x, int64_t n, float* y) {
  if (avx512()) return bf16_to_f32_avx512(x, n, y);
  for (int64_t i = 0; i < n; ++i) y[i] = bf16_value(x[i]);
}

void add_scaled(const uint16_t* y_bf16, float g, int64_t n, float* o) {
  if (avx512()) return add_scaled_avx512(y_bf16, g, n, o);
  add_scaled_scalar(y_bf16, g, n, o);
}

void add_scaled(const float* y, float g, int64_t n, float* o) {
  if (avx512()) return add_scaled_avx512(y, g, n, o);
  add_scaled_scalar(y, g, n, o);
}

}  // namespace ecdlm::kernels
