// Helpers shared by the AVX512 backends (bf16 and int8): horizontal sums and exp. Targeted at AVX512F alone, so it
// inlines into callers compiled for any AVX512 superset (BF16, VNNI).
#pragma once
#include <immintrin.h>

#include <cstdint>

namespace ecdlm::kernels::detail {

// The four sums of a, b, c, d (16 lanes each) into y[0..3]: one shuffle tree instead of four
// separate horizontal reductions, which cost as much as the dot products when K is 512.
__attribute__((target("avx512f"))) inline void reduce4(__m512 a, __m512 b, __m512 c, __m512 d, float* y) {
  const __m512 ab = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x44), _mm512_shuffle_f32x4(a, b, 0xEE));
  const __m512 cd = _mm512_add_ps(_mm512_shuffle_f32x4(c, d, 0x44), _mm512_shuffle_f32x4(c, d, 0xEE));
  __m512 t = _mm512_add_ps(_mm512_shuffle_f32x4(ab, cd, 0x88), _mm512_shuffle_f32x4(ab, cd, 0xDD));
  t = _mm512_add_ps(t, _mm512_permute_ps(t, 0x4E));
  t = _mm512_add_ps(t, _mm512_permute_ps(t, 0xB1));
  _mm_storeu_ps(y, _mm512_castps512_ps128(_mm512_maskz_compress_ps(0x1111, t)));
}

// 16 f16 values (scales, minimums) as f32.
__attribute__((target("avx512f"))) inline __m512 half16(const uint16_t* h) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(h)));
}

// The first n of 16 lanes (none for n <= 0, all for n >= 16).
inline __mmask16 tail_mask(int64_t n) {
  return static_cast<__mmask16>(n >= 16 ? 0xFFFF : (n <= 0 ? 0 : (1U << n) - 1));
}

// The lanes of m from 16 bf16 bit patterns at p, as f32 (exact: a bf16 is the high half of an f32).
__attribute__((target("avx512f,avx512bw,avx512vl"))) inline __m512 load_bf16(const void* p, __mmask16 m) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p)), 16));
}

// Horizontal max and sum of 16 lanes, the sum in lane order (a fixed order: results that must
// not depend on the batch use it).
__attribute__((target("avx512f"))) inline float hmax(__m512 v) {
  alignas(64) float a[16];
  _mm512_store_ps(a, v);
  float m = a[0];
  for (int i = 1; i < 16; ++i) m = m < a[i] ? a[i] : m;
  return m;
}
__attribute__((target("avx512f"))) inline float hsum_ordered(__m512 v) {
  alignas(64) float a[16];
  _mm512_store_ps(a, v);
  float s = a[0];
  for (int i = 1; i < 16; ++i) s += a[i];
  return s;
}

// exp(x) for |x| <= 88: 2^n · p(r), r = x - n ln 2, Cephes' degree-6 expf polynomial (relative
// error about 1e-7). The SwiGLU activations of the bf16 and int8 backends.
__attribute__((target("avx512f"))) inline __m512 exp_ps(__m512 x) {
  x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.0F)), _mm512_set1_ps(-88.0F));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341F)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375F), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4F), r);
  __m512 p = _mm512_set1_ps(1.9875691500E-4F);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507E-3F));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073E-3F));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894E-2F));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459E-1F));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201E-1F));
  const __m512 y = _mm512_add_ps(_mm512_fmadd_ps(_mm512_mul_ps(p, r), r, r), _mm512_set1_ps(1.0F));
  return _mm512_scalef_ps(y, n);
}

}  // namespace ecdlm::kernels::detail
