#include "ecdlm/kernels/pack_arena.h"

#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <mutex>
#include <vector>

namespace ecdlm::kernels::detail {
namespace {

constexpr std::size_t kHuge = std::size_t{2} << 20, kAlign = 64;

struct Region {
  char* base = nullptr;
  std::size_t bytes = 0;
  std::atomic<std::size_t> used{0};
  std::atomic<std::size_t> live{0};  // allocations not yet freed
  bool open = true;                  // the scope still hands out its bytes
};

// Never destroyed: cached copies are freed during static destruction, after this file's statics.
struct State {
  std::mutex mu;
  std::vector<Region*> regions;  // live regions
  std::atomic<Region*> open{nullptr};
};
State& st() {
  static State* s = new State;
  return *s;
}

Region* map_region(std::size_t bytes) {
  bytes = (bytes + kHuge - 1) / kHuge * kHuge;
  // Over-map by one huge page and trim, so the region starts on a 2 MB boundary.
  void* m = ::mmap(nullptr, bytes + kHuge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED) return nullptr;
  const auto a = reinterpret_cast<std::uintptr_t>(m), start = (a + kHuge - 1) / kHuge * kHuge;
  if (start > a) ::munmap(m, start - a);
  if (const std::uintptr_t end = start + bytes, mend = a + bytes + kHuge; mend > end)
    ::munmap(reinterpret_cast<void*>(end), mend - end);
  ::madvise(reinterpret_cast<void*>(start), bytes, MADV_HUGEPAGE);  // advice: 4 KB pages still work
  auto* r = new Region;
  r->base = reinterpret_cast<char*>(start);
  r->bytes = bytes;
  return r;
}

// Under st().mu: unmaps r once it is closed and empty.
void drop_if_done(Region* r) {
  if (r->open || r->live.load() != 0) return;
  auto& regions = st().regions;
  regions.erase(std::find(regions.begin(), regions.end(), r));
  ::munmap(r->base, r->bytes);
  delete r;
}

}  // namespace

PackArenaScope::PackArenaScope(std::size_t bytes) {
  Region* r = bytes ? map_region(bytes) : nullptr;
  if (!r) return;  // no region: copies come from the heap (or the displaced scope's), as without it
  std::lock_guard<std::mutex> lock(st().mu);
  st().regions.push_back(r);
  region_ = r;
  prev_ = st().open.exchange(r);
}

PackArenaScope::~PackArenaScope() {
  if (!region_) return;
  std::lock_guard<std::mutex> lock(st().mu);
  auto* r = static_cast<Region*>(region_);
  st().open = static_cast<Region*>(prev_);
  r->open = false;
  drop_if_done(r);
}

void* pack_alloc(std::size_t bytes) {
  const std::size_t n = (std::max<std::size_t>(bytes, 1) + kAlign - 1) / kAlign * kAlign;
  if (Region* r = st().open.load()) {
    const std::size_t at = r->used.fetch_add(n);
    if (at + n <= r->bytes) {
      r->live.fetch_add(1);
      return r->base + at;
    }
  }
  void* p = std::aligned_alloc(kAlign, n);
  if (!p) throw std::bad_alloc();
  return p;
}

void pack_free(void* p, std::size_t /*bytes*/) {
  if (!p) return;
  const auto* c = static_cast<const char*>(p);
  {
    std::lock_guard<std::mutex> lock(st().mu);
    for (Region* r : st().regions)
      if (c >= r->base && c < r->base + r->bytes) {
        r->live.fetch_sub(1);
        drop_if_done(r);
        return;
      }
  }
  std::free(p);
}

std::size_t pack_arena_bytes() {
  std::lock_guard<std::mutex> lock(st().mu);
  std::size_t b = 0;
  for (const Region* r : st().regions) b += r->bytes;
  return b;
}

}  // namespace ecdlm::kernels::detail
