// Weight-only, group-wise quantized linear weights: the packed layouts, quantization from an
// f32/bf16 weight and the reference dequantization. A format is data (this file); the kernels that
// multiply by it are in kernels/quant.h. Byte-by-byte layout: docs/quantization-format.md.
//
// A weight w_NK [N, K] (torch's linear layout: N output rows, K inputs) is cut into groups of G
// consecutive inputs of one row. Every tensor is row-major by output row, so a kernel streams one
// row's bytes contiguously, and all are plain tensors (safetensors-ready under derived names
// such as W.qweight, W.scales, W.mins):
//   q8_gG   qweight int8 [N, K], symmetric: w = d · q, q in [-127, 127], d = max|w| / 127.
//   q4_gG   qweight uint8 [N, K/2], asymmetric: w = d · q + m, q in [0, 15] (scale and minimum,
//           least-squares refined). Nibbles in chunks of 128 inputs: byte i of a chunk of L
//           inputs (L = 128, or the row's last K % 128) holds input i in its low nibble and input
//           L/2 + i in its high one, so one 64-byte load unpacks (and, shift) into two 64-input
//           vectors matching 64 consecutive activations.
//   q4s_gG  as q4 without minimum: w = d · (q - 8), d = (the signed max-|w| value) / -8, refined.
// scales (and mins): f16 [N, K/G]. f16 keeps 11 bits of the scale (bf16 only 8: a 0.4% scale error,
// as large as q8's own rounding); the bytes per weight are q8 34/32, q4 20/32, q4s 18/32 at G = 32.
//
// Chosen defaults (measured, tests/unit/test_quant.cpp QuantFormat.ErrorTable; docs): q8_g32 and
// q4_g32. Relative RMS error on Gaussian / Student-t(3) weights: see docs/quantization-format.md.
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <string>

namespace ecdlm::io {

enum class QuantKind { kQ8, kQ4, kQ4Sym };

struct QuantFormat {
  QuantKind kind = QuantKind::kQ8;
  int64_t group = 32;  // 32 or 64
  bool operator==(const QuantFormat& o) const { return kind == o.kind && group == o.group; }
};

// "q8_g32", "q4_g64", "q4s_g32". parse throws UserError naming `field` for anything else.
std::string quant_format_name(QuantFormat f);
QuantFormat parse_quant_format(const std::string& name, const std::string& field);
// Packed bytes of an [N, K] weight (qweight + scales + mins).
int64_t quant_bytes(QuantFormat f, int64_t N, int64_t K);
constexpr int64_t kQ4Chunk = 128;  // inputs per nibble chunk (see above)

struct QuantWeight {
  QuantFormat format;
  int64_t N = 0, K = 0;
  torch::Tensor qweight;  // q8: int8 [N, K]; q4, q4s: uint8 [N, K / 2]
  torch::Tensor scales;   // f16 [N, K / G]
  torch::Tensor mins;     // f16 [N, K / G] for q4; undefined otherwise
  int64_t bytes() const { return quant_bytes(format, N, K); }
};

// w_NK: f32 or bf16 [N, K], K a positive multiple of the group. Throws UserError otherwise.
QuantWeight quantize(const torch::Tensor& w_NK, QuantFormat f);
// The reference: f32 [N, K] (rows [n0, n1) with the overload).
torch::Tensor dequantize(const QuantWeight& q);
torch::Tensor dequantize_rows(const QuantWeight& q, int64_t n0, int64_t n1);
// Assembles and validates a packed weight from its tensors (dtypes, shapes, contiguity, CPU); for
// loaders. Throws UserError naming `name` on any mismatch.
QuantWeight make_quant_weight(QuantFormat f, torch::Tensor qweight, torch::Tensor scales, torch::Tensor mins,
                              const std::string& name);

namespace detail {
// Quantize one group of G values to codes q (q8: int8 values as int; q4: 0..15) and f16-rounded
// scale d and min m (0 for symmetric kinds). refine: least-squares refit of q4's scale (and min).
void quantize_group(QuantKind kind, const float* v, int64_t G, bool refine, int* q, float* d, float* m);
// std::nearbyint under the default rounding (ties to even) without its libm call, which the
// baseline x86-64 build made per weight (no roundss before SSE4.1): adding and removing 1.5 · 2^23
// leaves x rounded to an integer for |x| < 2^22; beyond, the result stays as far out on the same
// side, so the codes' clamps give what nearbyint gives (test: QuantFormat.RoundEvenAsNearbyint).
float round_even(float x);
// Relative RMS error ||w - deq(quant(w))|| / ||w|| with or without q4's refinement.
double relative_rms_error(const torch::Tensor& w_NK, QuantFormat f, bool refine);
}  // namespace detail

}  // namespace ecdlm::io
