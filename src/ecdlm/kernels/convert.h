// Row helpers between bf16 and f32 for the glue around the kernels (activation quantization, the
// MoE combine): AVX512 where the CPU has it, scalar otherwise, the same bits either way.
#pragma once
#include <cstdint>

namespace ecdlm::kernels {

// y[i] = f32(x[i]) (exact: a bf16 is the upper half of an f32). x: bf16 bit patterns.
void bf16_to_f32(const uint16_t* x, int64_t n, float* y);
// o[i] = o[i] + f32(y[i]) * g, the product rounded to f32 before the sum (no fused multiply-add),
// as torch's `index_add(y * g)` computes it: the vector path keeps those bits.
void add_scaled(const uint16_t* y_bf16, float g, int64_t n, float* o);
void add_scaled(const float* y, float g, int64_t n, float* o);

namespace detail {
// Tests: off forces the scalar loops on an AVX512 CPU (process-wide; default on).
void set_convert_vector(bool on);
}  // namespace detail

}  // namespace ecdlm::kernels
