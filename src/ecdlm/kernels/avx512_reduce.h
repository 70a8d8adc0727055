// Horizontal sums shared by the AVX512 backends (bf16 and int8). Targeted at AVX512F alone, so it
// inlines into callers compiled for any AVX512 superset (BF16, VNNI).
#pragma once
#include <immintrin.h>

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

}  // namespace ecdlm::kernels::detail
