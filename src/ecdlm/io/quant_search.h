// The q4 / q8 code search's inner step (io/quant_format.cpp), exposed for its tests: the squared
// error of a group of G weights under a scale d and minimum m, with each weight's code re-chosen
// for them (written to q). The AVX-512 version gives the scalar one's codes and error bit for bit
// (same float operations per weight, no contraction; the error summed in the same order).
#pragma once
#include <cstdint>

#include "ecdlm/io/quant_format.h"

namespace ecdlm::io::detail {

double requantize_scalar(QuantKind kind, const float* v, int64_t G, float d, float m, int* q);
double requantize_avx512(QuantKind kind, const float* v, int64_t G, float d, float m, int* q);  // G % 16 == 0

}  // namespace ecdlm::io::detail
