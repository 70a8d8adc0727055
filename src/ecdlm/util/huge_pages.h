// Transparent huge pages for large CPU tensors. A decoding step streams gigabytes of weights; on
// 4 KB pages that is one TLB walk per page, and side by side the expert stream ran 7.7% slower
// than on 2 MB pages (bench: ExpertStream's pages argument). Weights mapped from safetensors
// files are not allocations and stay on file pages.
#pragma once

#include <cstddef>
#include <string>

namespace ecdlm::huge_pages {

// What the kernel offers: "always", "madvise" or "never" (/sys/kernel/mm/transparent_hugepage),
// or "unavailable" where that file is missing.
std::string thp_mode();

// Makes libtorch's CPU allocator place every allocation of at least min_bytes on 2 MB-aligned
// memory advised MADV_HUGEPAGE (smaller ones as before). Idempotent; call before building models.
void install(std::size_t min_bytes = std::size_t{4} << 20);

// Whether new large allocations take huge pages (install() turns it on); existing tensors keep theirs.
void set_enabled(bool on);
bool enabled();

// Bytes currently held in huge-page-advised allocations (for logs and tests).
std::size_t bytes_in_use();

// Freed huge blocks are kept for reuse, up to this many bytes (the oldest go first). A decoding step
// allocates the same large buffers (logits, expert activations) every step; without the cache each
// one is unmapped and faulted in again, zeroing 2 MB per fault. 0 turns the cache off. Default:
// 1/32 of physical memory, at most 1 GiB.
void set_cache_limit(std::size_t bytes);
std::size_t cache_limit();
// Bytes held by freed blocks awaiting reuse, and how many allocations were served from them.
std::size_t cached_bytes();
std::size_t cache_hits();
// Returns every cached block to the kernel.
void release_cached();

// glibc malloc settings for allocations below the huge-block size: a fixed 32 MiB mmap threshold and
// a 256 MiB trim threshold, so freed heap memory is reused instead of returned and faulted in again
// every step. Call once, early in main().
void tune_malloc();

}  // namespace ecdlm::huge_pages
