// Repacking switch for the quantized kernels (kernels/quant_repack.cpp): with it on, the AVX512-VNNI
// path runs its products on a copy of each weight repacked into output lanes, built at load
// (prepack_quant) or on first use and kept while the weight lives: products of fewer than
// kPackedLaneMinRows (64) token rows (a cached step's experts, projections and LM head) in the
// packed few-row kernel, 8 tokens per pass, ~1.5 vector ops per 64 weight bytes and token against
// the 4 x 4 tiles' ~4-5; 64 rows and more (a prefill, a batch's projections) in the token-lane
// kernel reading the copy in place (quant_lanes_packed.cpp: no per-call panel copy, no dequantized
// weight). Process-wide; other CPUs ignore it.
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
// measured a third of the copies inside its timed forwards after its warm-up). Returns the bytes
// of row layout this handed back (0 on a CPU without AVX512-VNNI: no copies).
int64_t prepack_quant(const std::vector<const io::QuantWeight*>& ws);
// Whenever a weight's copy is built (here or on first use) its row layout (codes, scales,
// minimums), which the vnni products no longer read, is handed back to the kernel (MADV_PAGEOUT:
// a mapped checkpoint's pages leave memory, so the copies do not double it). Bytes so far.
int64_t quant_rows_released();
// From now on, copies built on first use take their bytes from one region of `bytes` advised
// MADV_HUGEPAGE (address space only: pages commit as copies are written), as prepack_quant's do:
// from the heap each fresh 4 KB page faults alone (~4 ms per MB in this guest), inside a step.
// Kept for the process; a second call is ignored.
void reserve_quant_copies(int64_t bytes);

}  // namespace ecdlm::kernels
