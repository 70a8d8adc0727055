// Repacking switch for the quantized kernels (kernels/quant_repack.cpp): with it on, the AVX512-VNNI
// path runs products of fewer than 16 token rows (routed experts in a cached step) on a copy of
// each weight repacked into output lanes, built on first use and kept while the weight lives. It
// streams one contiguous block per 16 rows and pays ~1.5 vector ops per 64 weight bytes and token
// against the 4 x 4 tiles' ~4-5, but every weight it touches is held twice (the row layout stays
// mapped): off by default. Process-wide; other CPUs ignore it.
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
