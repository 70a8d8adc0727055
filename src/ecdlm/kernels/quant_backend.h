// Internal interface between the quantized-weight driver (quant.cpp) and its instruction-set
// backends (quant_avx512.cpp, quant_avx2.cpp). Every function runs on one thread inside a
// parallel region the driver owns.
#pragma once
#include <c10/util/BFloat16.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "ecdlm/io/quant_format.h"
#include "ecdlm/kernels/pack_arena.h"
#include "ecdlm/kernels/quant.h"
#include "ecdlm/kernels/quant_repack.h"
#include "ecdlm/kernels/small_m.h"

namespace ecdlm::kernels::detail {

// Token rows up to which the int8 kernels run (quant_max_rows()). Their arithmetic per weight byte
// grows with the rows (about 4 vector ops per 64 inputs and token), so past a few tokens they are
// compute-bound, but at 64 rows still 2-4x faster than dequantizing + torch's GEMM (BM_QuantLinear,
// one thread, 2048 x 2048: q8 107 ms against 200 ms per 24 weights).
constexpr int64_t kInt8MaxRows = 64;
// The int8 kernels take any row count instead
//  - on repacked weights (quant_repack.h, vnni): the token-lane kernel reads the copy in place (the
//    prefill too), so the rows are never read again;
//  - inside the decoders' scope (kernels::F32TilesScope, small_m.h), vnni or avx2: a served row
//    must get the same bits alone and in any batch (continuous batching), where torch's GEMM would
//    take the rows beyond 64 with x unquantized.
// Either way a row's result then does not depend on how many rows share the call.
inline bool int8_any_rows(QuantKernel backend) {
  return (is_vnni(backend) && quant_repack()) ||
         ((is_vnni(backend) || backend == QuantKernel::kAvx2) && f32_tiles_active());
}
// Whether vnni may run the token-lane kernel (16+ rows) on a weight's row layout (copied into a
// panel per call): not inside the decoders' scope, where its group-wise sums would differ from the
// 4 x 4 tiles a row alone takes. On the copies both kernels give the same bits (quant_repack.cpp).
inline bool row_layout_lanes() { return !f32_tiles_active(); }

// The token rows of one call, quantized per row and group of G (driver-owned scratch).
struct QxOperand {
  int64_t M = 0, K = 0, G = 32;
  const int8_t* q = nullptr;      // [M, K] codes
  const float* d = nullptr;       // [M, K / G] scales
  const float* s = nullptr;       // [M, K / 4] the scale of each 4-code lane's group
  const int32_t* bias = nullptr;  // [M, K / 4] -Z · (sum of the lane's 4 codes): u8 offset paid back
  const float* c = nullptr;       // [M, K / G] d · (sum of the group's codes): q4's minimum term
  const int32_t* gb = nullptr;    // [M, K / G] -Z · (sum of the group's codes): the bias per group
};

// Writable buffers of a QxOperand (the drivers' thread-local scratch): rows of K codes, K / G
// group scales and sums, K / 4 lane scales and biases.
struct QxStore {
  int64_t M = 0, K = 0, G = 32;
  int8_t* q = nullptr;
  float* d = nullptr;
  float* s = nullptr;
  int32_t* bias = nullptr;
  float* c = nullptr;
  int32_t* gb = nullptr;
  QxOperand view() const { return {M, K, G, q, d, s, bias, c, gb}; }
};

// Growable buffers behind a QxStore (thread-local in the drivers).
struct QxScratch {
  std::vector<int8_t> q;
  std::vector<float> d, s, c;
  std::vector<int32_t> bias, gb;
  QxStore store(int64_t M, int64_t K, int64_t G);  // room for M rows of K
};

// f32 copy of a bf16 row in buf (grown as needed).
const float* bf16_row(const at::BFloat16* x, int64_t n, std::vector<float>& buf);

// Rows [m0, m0 + M) of x as an operand of their own (one expert's rows).
inline QxOperand rows_of(const QxOperand& x, int64_t m0, int64_t M) {
  const int64_t KG = x.K / x.G, K4 = x.K / 4;
  return {M,           x.K,          x.G,           x.q + m0 * x.K, x.d + m0 * KG, x.s + m0 * K4, x.bias + m0 * K4,
          x.c + m0 * KG, x.gb + m0 * KG};
}

// Quantizes n values v (n a multiple of G) of row m into the store at input k0 (a multiple of G):
// per group d = max|v| / 127, q = clamp(round_even(v · 127 / max|v|), ±127), the group sum c =
// d · Σ q, the group bias -z · Σ q, each 4-code lane's scale d and bias -z · (its 4 codes' sum). The AVX512 version gives
// the scalar one's values bit for bit (tests: QuantKernels.RowQuantizersAgree).
void quantize_row_scalar(const float* v, int64_t n, const QxStore& x, int64_t m, int64_t k0, int32_t z);
void avx512_quantize_row(const float* v, int64_t n, const QxStore& x, int64_t m, int64_t k0, int32_t z);
// The AVX512 version on a VNNI CPU, else the scalar one.
void quantize_row(const float* v, int64_t n, const QxStore& x, int64_t m, int64_t k0, int32_t z);
// g = silu(g) · u in place (AVX512: a polynomial exp, relative error ~1e-7).
void silu_mul_scalar(float* g, const float* u, int64_t n);
void avx512_silu_mul(float* g, const float* u, int64_t n);
// out = bf16(y), nearest-even as c10::BFloat16 (NaN -> 0x7FC0).
void round_bf16_scalar(const float* y, int64_t n, uint16_t* out);
void avx512_round_bf16_f(const float* y, int64_t n, uint16_t* out);

struct Packed;  // below

// One packed weight (io::QuantWeight's tensors as raw pointers). Row n's codes start at
// q + n * row_bytes; scales and mins are f16 bits, [N, K / G].
struct QwOperand {
  io::QuantKind kind = io::QuantKind::kQ8;
  int64_t K = 0, G = 32, row_bytes = 0;
  const uint8_t* q = nullptr;
  const uint16_t* d = nullptr;
  const uint16_t* m = nullptr;  // q4 only
  const Packed* packed = nullptr;  // the output-lane copy, when the driver took one (vnni)
  bool amx = false;                // the copy's products may run on AMX-INT8 tiles (amx_packed_rows)
};

QwOperand weight_operand(const io::QuantWeight& w);

// The zero point the vnni kernels' bias pays back: q8 codes enter as u8 = q + 128, q4s as q (w ∝ q - 8).
inline int32_t vnni_zero_point(io::QuantKind k) {
  return k == io::QuantKind::kQ8 ? 128 : k == io::QuantKind::kQ4Sym ? 8 : 0;
}

// y[m * ldy + (n - n0)] = x_m · deq(w_n) for n in [n0, n1), m < M (x's codes and scales).
// x.bias is built with vnni_zero_point(w.kind); avx2 reads it for q4 only (q8: sign trick).
// w.packed set: vnni_packed_rows instead of the 4 x 4 tiles.
void vnni_rows(const QxOperand& x, const QwOperand& w, int64_t n0, int64_t n1, float* y, int64_t ldy);
void avx2_rows(const QxOperand& x, const QwOperand& w, int64_t n0, int64_t n1, float* y, int64_t ldy);

// The token-lane operand of the many-row vnni kernel (quant_lanes.cpp): x's rows in blocks of 16
// tokens, one token per int32 lane, so a weight's 4 codes broadcast to all lanes meet 16 tokens in
// one vpdpbusd and each lane accumulates one (row, token, group) in int32 over the whole group
// (G / 4 instructions); the scales apply once per group, not once per 64 inputs as in the 4 x 4
// tiles. TB = ceil(M / 16) blocks; tokens past M are zero (codes, scales, sums).
struct QxLanes {
  int64_t M = 0, K = 0, G = 32, TB = 0;
  const int32_t* q = nullptr;     // [K / 4][TB][16]: token t's codes k .. k + 3 at [k / 4][t / 16][t % 16]
  const int32_t* bias = nullptr;  // [K / G][TB][16]: -z · (the group's code sum), z the weight's zero point
  const float* d = nullptr;       // [K / G][TB][16]: the group scales
  const float* c = nullptr;       // [K / G][TB][16]: d · (the group's code sum), q4's minimum term
};

// Growable buffers behind a QxLanes (thread-local in the drivers).
struct QxLaneScratch {
  std::vector<int32_t> q, bias;
  std::vector<float> d, c;
};

// x's rows in the token-lane layout, the bias built for zero point z (vnni_zero_point).
QxLanes build_lanes(const QxOperand& x, int32_t z, QxLaneScratch& buf);
// Token rows from which the drivers take the token-lane kernel instead of the 4 x 4 tiles. Below,
// lanes sit idle (at 8 rows half of every instruction is padding): BM_QuantStepMin (one thread,
// loaded Zen 5, fastest of 40 interleaved calls) measured the tiles 1.6x faster at 8 rows, the
// lanes 1.05x (q8) / 1.2x (q4) faster at 16 and 1.4x / 1.8x at 32 (2048 x 2048).
constexpr int64_t kLaneMinRows = 16;
// The same on the repacked copies, where the other choice is the few-row kernel (quant_repack.cpp:
// 8 tokens per pass, each 16-row block's bytes read from memory once and from L1 for its other
// passes), which the token lanes beat only from 32-64 rows, and only streaming the LM head.
// BM_PackedFewRowVsLanes (interleaved, medians of 9; 2-core Zen 5, session 10), few-row speed-up at
// 16 / 24 / 32 / 64 rows, q8 | q4_g64: 64 experts from memory 1.50 / 1.42 / 1.19 / 1.21 | 1.29 /
// 1.37 / 1.09 / 1.09; a hot [256, 2048] 1.36 / 1.48 / 1.27 / 1.29 | 1.21 / 1.40 / 1.23 / 1.23; the
// [157184, 2048] head 0.99 / 1.33 / 1.07 / 1.06 | 0.94 / 1.22 / 0.92 / 0.83. The token lanes idle
// on a partly filled 16-token vector and pay a broadcast per weight row and step, which 8 tokens of
// the few-row kernel share. From 128 rows (session 12) the same benchmark has the few-row kernel
// ahead on the experts (128 / 224 / 512 rows: 1.41 / 1.16 / 2.08 | 1.60 / 1.16 / 2.05) and the hot
// weight (1.41 / 1.35 / 1.39 | 1.30 / 1.28 / 1.39) and behind on the head (0.97 / 0.98 / 0.93 |
// 0.89 / 0.89 / 0.85), but sending every non-vocabulary weight to it changed nothing end to end:
// `bench serve` at 8 clients (q4, 224-row projections, shared expert and dense MLP) 215 / 210 ms
// per step before, 215 / 238 after; a 480-token prefill on the 20-layer q4_g64 shape 1.91 / 2.04 s
// before, 1.95 / 2.07 s after. So the limit stays.
constexpr int64_t kPackedLaneMinRows = 64;
// The copies' limit now (kPackedLaneMinRows unless a benchmark or test moved it, to compare the two
// kernels on the same rows; their bits are equal) and the limit for a product on the copies or not.
int64_t packed_lane_min_rows();
void set_packed_lane_min_rows(int64_t rows);
inline int64_t lane_min_rows(bool packed) { return packed ? packed_lane_min_rows() : kLaneMinRows; }
// Token rows from which the few-row kernel runs two 16-row blocks at a time (one broadcast of a
// token's codes feeds both), and the limit now (a benchmark or test may move it; same bits).
constexpr int64_t kPackedPairMinRows = 9;
int64_t packed_pair_min_rows();
void set_packed_pair_min_rows(int64_t rows);
// y[m * ldy + (n - n0)] = x_m · deq(w_n) for n in [n0, n1), m < M, from the token-lane operand.
// w.packed set: vnni_lane_rows_packed (no per-call panel copy).
void vnni_lane_rows(const QxLanes& x, const QwOperand& w, int64_t n0, int64_t n1, float* y, int64_t ldy);

// A weight repacked into output lanes (quant_repack.cpp): 16-row blocks, each block's input slot
// s (4 inputs) of its 16 rows one 64-byte vector, lane j = row j's 4 codes (q8: + 128 as u8; q4:
// the packed bytes of inputs 4s .. of a 128-input chunk, nibbles as in the row layout; q4's
// K % 128 tail is not packed). Scales and minimums f16 [NB][K / G][16].
struct Packed {
  int64_t NB = 0, K = 0, G = 32, slots = 0;  // slots: 64-byte vectors per block
  std::vector<uint8_t, PackAlloc<uint8_t>> q;  // pack_arena.h: one huge-page region when prepacked
  std::vector<uint16_t, PackAlloc<uint16_t>> d, m;
};
// Prefetch distance in bytes of a block's stream in the kernels reading the copies (every 64-byte
// line is asked for): the hardware prefetchers stop at 4 KB pages. BM_QuantMoeMin, one thread:
// 2-8% faster than one line per group.
constexpr int64_t kPackedPrefetch = 4096;
// Bytes a packed copy of w takes (codes, scales, minimums).
int64_t packed_bytes(const io::QuantWeight& w);
// Whether the vnni drivers run their products on packed copies: quant_repack.h.
// w's packed copy, built on the first call and shared until w's storage is freed. Thread-safe.
std::shared_ptr<const Packed> packed(const io::QuantWeight& w);
// Whether w's packed copy is built already (tests).
bool has_packed(const io::QuantWeight& w);
// vnni_lane_rows reading the packed copy p of w in place (quant_lanes_packed.cpp; any n0, n1):
// bit-identical to the panel kernel on w's row layout. q4's K % 128 tail still reads w's rows.
void vnni_lane_rows_packed(const QxLanes& x, const Packed& p, const QwOperand& w, int64_t n0, int64_t n1, float* y,
                           int64_t ldy);
// vnni_rows over the packed copy p of w (n0 a multiple of 16): per token row bit-identical to
// vnni_lane_rows_packed (same group sums, same f32 steps in the same order, q4's tail included).
void vnni_packed_rows(const QxOperand& x, const Packed& p, const QwOperand& w, int64_t n0, int64_t n1, float* y,
                      int64_t ldy);

// --- AMX-INT8 (quant_amx.cpp) ---------------------------------------------------------------
// The packed copy is tdpbsud's B operand as it lies: a 16-row block's slots s .. s + G / 4 - 1 are
// one [G / 4, 64-byte] tile (row = 4 inputs, dword j = output row j's 4 codes), the token rows'
// codes the A tile ([16 tokens, G bytes], read in place), and one tile product gives 16 tokens x 16
// rows of a group's int32 sums. The epilogue is vnni_packed_rows': the same int32 sums (+ the
// group bias) and the same f32 steps per (row, token) in the same order, so the same bits.
// Whether amx_packed_rows takes p (q8, or q4 without a K % 128 tail).
bool amx_packed_applies(const Packed& p, const QwOperand& w);
// vnni_packed_rows on AMX-INT8 tiles (real ones, or emulated where set_amx_int8_emulated is on).
void amx_packed_rows(const QxOperand& x, const Packed& p, const QwOperand& w, int64_t n0, int64_t n1, float* y,
                     int64_t ldy);
// Token rows from which vnni_packed_rows hands a w.amx product to the tiles, and the limit now (a
// test or benchmark may move it; same bits). Not measured on an AMX CPU (none to run on so far):
// 9 is where the VNNI kernel stops being bound by the weight stream (kPackedPairMinRows).
constexpr int64_t kPackedAmxMinRows = 9;
int64_t packed_amx_min_rows();
void set_packed_amx_min_rows(int64_t rows);
// Tests: run the AMX-INT8 kernel on scalar tiles that follow the instructions' definitions (tile
// shapes from the loaded configuration, tdpbsud's signed x unsigned dword sums), so its layout
// logic runs on CPUs without AMX; --quant-kernel amx is then accepted anywhere.
void set_amx_int8_emulated(bool on);
bool amx_int8_emulated();
// The tiles (emulated or the hardware's) against the VNNI kernel on a fixed random case of each
// tile shape (q8 G 64, q4 G 32; 17 tokens): true when every bit agrees. cpu_has_amx_int8() runs it
// once on the hardware and keeps to vnni otherwise (the hardware path is new and, so far, run on
// emulated tiles only).
bool amx_int8_self_check(bool emulated);
// Throws UserError (naming `what` and the fix) when this CPU cannot run kernel k (kAmx: AMX-INT8
// granted and self-checked, or emulated tiles on a VNNI CPU).
void require_quant_kernel(QuantKernel k, const std::string& what);

// Row n of w dequantized to bf16 (AVX512-BF16): out[k] = bf16((code - z) · d + m), the values
// io::dequantize_rows gives, rounded to nearest-even.
void avx512_dequant_row_bf16(const QwOperand& w, int64_t n, uint16_t* out);

// q4 rows whose K is not a multiple of 128 end in a shorter chunk: its groups' integer dot
// products, scaled (without the minimum term, which the kernels add over all groups). Scalar; the
// row-layout kernels (vnni 4 x 4 tiles, avx2) add it after their sums.
float q4_tail(const QxOperand& x, int64_t m, const QwOperand& w, int64_t n, int64_t k0);

}  // namespace ecdlm::kernels::detail
