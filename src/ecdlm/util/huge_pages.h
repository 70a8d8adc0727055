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

}  // namespace ecdlm::huge_pages
