// Repacking switch for the quantized kernels (kernels/quant_repack.cpp): with it on, the AVX512-VNNI
// path runs its products on a copy of each weight repacked into output lanes, built on first use
// and kept while the weight lives: products of fewer than 16 token rows (routed experts in a cached
// step) in the packed few-row kernel, ~1.5 vector ops per 64 weight bytes and token against the
// 4 x 4 tiles' ~4-5; 16 rows and more in the token-lane kernel reading the copy in place
// (quant_lanes_packed.cpp: no per-call panel copy). Every weight it touches is held twice (the row
// layout stays mapped): off by default. Process-wide; other CPUs ignore it.
#pragma once
#include <vector>

namespace ecdlm::io {
struct QuantWeight;
}

namespace ecdlm::kernels {

void set_quant_repack(bool on);
bool quant_repack();
// Builds the packed copies of ws now, in parallel, instead of on first use: a first use inside a
// decoding step copies the weight single-threaded in the middle of the step (bench generate
// measured a third of the copies inside its timed forwards after its warm-up).
void prepack_quant(const std::vector<const io::QuantWeight*>& ws);

}  // namespace ecdlm::kernels
