// Internal interface between the small-M drivers (small_m.cpp) and the two instruction-set
// backends. Every function here runs on one thread, inside a parallel region the driver owns.
// Matrices are bf16 bit patterns (uint16_t), row-major; w is [N, K] as torch's linear weight.
#pragma once
#include <cstdint>

namespace ecdlm::kernels::detail {

// --- AVX512-BF16 (gemm_avx512.cpp): vdpbf16ps dot products, x read as it is ------------------
// y[m * ldy + (n - n0)] = x[m, :] · w[n, :] for n in [n0, n1), m < M. Any M, N, K.
void avx512_rows(const uint16_t* x_MK, int64_t M, int64_t K, const uint16_t* w_NK, int64_t n0, int64_t n1,
                 float* y, int64_t ldy);

// The same over f32 x and w (AVX512F FMA): the router's f32 product.
void avx512_rows_f32(const float* x_MK, int64_t M, int64_t K, const float* w_NK, int64_t n0, int64_t n1, float* y,
                     int64_t ldy);

// Vector helpers (AVX512-BF16; every AMX CPU has it). n elements, any n.
// h = bf16(silu(g) * u), with exp from a polynomial (relative error ~1e-7) before the rounding.
void avx512_silu_mul_bf16(const float* g, const float* u, int64_t n, uint16_t* h);
// out = bf16(y), nearest-even.
void avx512_round_bf16(const float* y, int64_t n, uint16_t* out);
// 16 pairs of bf16 (32 elements) from src (nullptr: zeros) to dst + p * stride, p = 0..15 (stride in
// elements, even): one k-chunk of one token into the AMX packed layout.
void avx512_scatter_pairs(const uint16_t* src, uint16_t* dst, int64_t stride);

// --- AMX-BF16 (gemm_amx.cpp): tile products with the weight as the A operand -----------------
// The weight rows stream as they are stored (no reorder, unlike oneDNN's matmul, which repacks B);
// the few token rows are packed once into the B operand's pair-interleaved (VNNI) layout.
constexpr int64_t kAmxK = 32;        // bf16 per tile row (64 bytes): K must be a multiple
constexpr int64_t kAmxRows = 16;     // weight rows per tile: n0 and n1 - n0 multiples of it
constexpr int64_t kAmxMaxM = 64;     // token rows per call (four 16-column B tiles)
constexpr int64_t kPageElems = 2048; // bf16 per 4 KB page

// Row folding. A weight row shorter than a 4 KB page (K = 512: the down projections) makes each
// tile load touch 4 rows per page out of order, a pattern the hardware prefetchers do not follow
// (measured 19.6 GB/s on two threads against 26 at K = 2048). With R consecutive rows taken as one
// row of R * K elements (a page), the loads walk every page in order again. The B operand then
// has R * M columns: token m's values sit in column q * M + m at k in [q K, (q + 1) K), zeros
// elsewhere, and output (row r, column q * M + m) is y[m, r * R + q]. R * M <= 32 keeps the extra
// tile products (R per weight byte, mostly on zeros) below memory time.
int64_t amx_fold(int64_t M, int64_t K, int64_t N);

// Elements (uint16) of the packed x: R * M columns rounded up to 16, R * K rows, zero padded.
int64_t amx_packed_size(int64_t M, int64_t K, int64_t R);
// Offset of (column c, k) in the packed layout of K columns: [c / 16][k / 32][(k % 32) / 2][c % 16][k % 2].
inline int64_t amx_packed_offset(int64_t c, int64_t k, int64_t K) {
  return (((c / 16) * (K / kAmxK) + k / kAmxK) * 16 + (k % kAmxK) / 2) * 32 + (c % 16) * 2 + (k & 1);
}
// Packs x [M, K] folded by R for the chunks [kc0, kc1) of R * K / 32, zeros included.
void amx_pack(const uint16_t* x_MK, int64_t M, int64_t K, int64_t R, uint16_t* xp, int64_t kc0, int64_t kc1);
// Writes chunk kc of the folded K' = R K (segment q = kc / (K / 32)) into the packed x, zeros
// included: token m's 32 values are src + m * ld. What amx_pack does, for values produced chunk
// by chunk.
void amx_pack_chunk(const uint16_t* src, int64_t ld, int64_t M, int64_t K, int64_t R, uint16_t* xp, int64_t kc);
// Per thread, around any amx_rows calls: load / release this kernel's tile configuration.
void amx_begin();
void amx_end();
// As avx512_rows, with x packed by amx_pack with the same R = amx_fold(M, K, N). K % 32 == 0,
// n0 and n1 - n0 multiples of 16 R, M <= 64 (R * M <= 32 when R > 1).
void amx_rows(const uint16_t* xp, int64_t M, int64_t K, int64_t R, const uint16_t* w_NK, int64_t n0, int64_t n1,
              float* y, int64_t ldy);

// CPU and OS support, probed once.
bool cpu_amx_bf16();  // CPUID AMX-TILE + AMX-BF16, and the OS granted this process tile data
bool cpu_amx_int8();  // CPUID AMX-TILE + AMX-INT8, the same

}  // namespace ecdlm::kernels::detail
