// Internal interface between the quantized-weight driver (quant.cpp) and its instruction-set
// backends (quant_avx512.cpp, quant_avx2.cpp). Every function runs on one thread inside a
// parallel region the driver owns.
#pragma once
#include <cstdint>

#include "ecdlm/io/quant_format.h"

namespace ecdlm::kernels::detail {

// The token rows of one call, quantized per row and group of G (driver-owned scratch).
struct QxOperand {
  int64_t M = 0, K = 0, G = 32;
  const int8_t* q = nullptr;      // [M, K] codes
  const float* d = nullptr;       // [M, K / G] scales
  const float* s = nullptr;       // [M, K / 4] the scale of each 4-code lane's group
  const int32_t* bias = nullptr;  // [M, K / 4] -Z · (sum of the lane's 4 codes): u8 offset paid back
  const float* c = nullptr;       // [M, K / G] d · (sum of the group's codes): q4's minimum term
};

// One packed weight (io::QuantWeight's tensors as raw pointers). Row n's codes start at
// q + n * row_bytes; scales and mins are f16 bits, [N, K / G].
struct QwOperand {
  io::QuantKind kind = io::QuantKind::kQ8;
  int64_t K = 0, G = 32, row_bytes = 0;
  const uint8_t* q = nullptr;
  const uint16_t* d = nullptr;
  const uint16_t* m = nullptr;  // q4 only
};

// The zero point the vnni kernels' bias pays back: q8 codes enter as u8 = q + 128, q4s as q (w ∝ q - 8).
inline int32_t vnni_zero_point(io::QuantKind k) {
  return k == io::QuantKind::kQ8 ? 128 : k == io::QuantKind::kQ4Sym ? 8 : 0;
}

// y[m * ldy + (n - n0)] = x_m · deq(w_n) for n in [n0, n1), m < M (x's codes and scales).
// x.bias is built with vnni_zero_point(w.kind); avx2 reads it for q4 only (q8: sign trick).
void vnni_rows(const QxOperand& x, const QwOperand& w, int64_t n0, int64_t n1, float* y, int64_t ldy);
void avx2_rows(const QxOperand& x, const QwOperand& w, int64_t n0, int64_t n1, float* y, int64_t ldy);

// q4 rows whose K is not a multiple of 128 end in a shorter chunk: its groups' integer dot
// products, scaled (without the minimum term, which the kernels add over all groups). Scalar.
float q4_tail(const QxOperand& x, int64_t m, const QwOperand& w, int64_t n, int64_t k0);

}  // namespace ecdlm::kernels::detail
