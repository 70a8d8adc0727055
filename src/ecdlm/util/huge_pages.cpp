#include "ecdlm/util/huge_pages.h"

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>
#include <malloc.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <new>
#include <unordered_map>
#include <vector>

namespace ecdlm::huge_pages {
namespace {

constexpr std::size_t kHugePage = std::size_t{2} << 20;

std::size_t default_cache_limit() {
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  const std::size_t phys = pages > 0 && page > 0 ? std::size_t(pages) * std::size_t(page) : 0;
  return std::min(phys / 32, std::size_t{1} << 30);
}

std::atomic<bool> g_enabled{false};
std::atomic<std::size_t> g_min_bytes{std::size_t{4} << 20};
std::atomic<std::size_t> g_in_use{0};
std::atomic<std::size_t> g_hits{0};

struct Cached {
  void* p;
  std::size_t bytes;
  std::uint64_t tick;  // when it was freed: the oldest is evicted first
};

// Live huge blocks (pointer -> mapped size) and freed ones kept for reuse, under one mutex. Huge
// blocks are mmap'd directly so they never fragment malloc's heap; plain blocks come from
// c10::alloc_cpu. release() tells them apart by the live map.
struct State {
  std::mutex mu;
  std::unordered_map<void*, std::size_t> live;
  std::vector<Cached> cached;
  std::size_t cached_bytes = 0;
  std::size_t limit = default_cache_limit();
  std::uint64_t tick = 0;
};
State& state() {
  static State* s = new State;  // never destroyed: tensors may be freed during static destruction
  return *s;
}

void* map_aligned(std::size_t bytes) {
  // Over-map by one huge page and trim, so the block starts on a 2 MB boundary.
  const std::size_t span = bytes + kHugePage;
  void* raw = mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) throw std::bad_alloc();
  const auto base = reinterpret_cast<std::uintptr_t>(raw);
  const auto start = (base + kHugePage - 1) / kHugePage * kHugePage;
  if (start > base) munmap(raw, start - base);
  const auto tail = base + span - (start + bytes);
  if (tail > 0) munmap(reinterpret_cast<void*>(start + bytes), tail);
  void* p = reinterpret_cast<void*>(start);
  // Before first touch, so the faults take whole 2 MB pages. Advice only: failure is harmless.
  (void)madvise(p, bytes, MADV_HUGEPAGE);
  return p;
}

// A cached block of at least `bytes` and at most a quarter (or 4 MiB) larger; caller holds the lock.
void* take_cached(State& s, std::size_t bytes, std::size_t* got) {
  const std::size_t most = bytes + std::max(bytes / 4, std::size_t{4} << 20);
  std::size_t best = s.cached.size();
  for (std::size_t i = 0; i < s.cached.size(); ++i) {
    const auto b = s.cached[i].bytes;
    if (b >= bytes && b <= most && (best == s.cached.size() || b < s.cached[best].bytes)) best = i;
  }
  if (best == s.cached.size()) return nullptr;
  void* p = s.cached[best].p;
  *got = s.cached[best].bytes;
  s.cached_bytes -= *got;
  s.cached[best] = s.cached.back();
  s.cached.pop_back();
  return p;
}

// Evicts the oldest blocks until `room` more bytes fit; returns the blocks to unmap outside the lock.
std::vector<Cached> make_room(State& s, std::size_t room) {
  std::vector<Cached> out;
  while (!s.cached.empty() && s.cached_bytes + room > s.limit) {
    auto it = std::min_element(s.cached.begin(), s.cached.end(),
                               [](const Cached& a, const Cached& b) { return a.tick < b.tick; });
    out.push_back(*it);
    s.cached_bytes -= it->bytes;
    *it = s.cached.back();
    s.cached.pop_back();
  }
  return out;
}

void unmap_all(const std::vector<Cached>& blocks) {
  for (const auto& b : blocks) munmap(b.p, b.bytes);
}

void release(void* p) {
  if (p == nullptr) return;
  auto& s = state();
  std::vector<Cached> evicted;
  {
    std::lock_guard<std::mutex> lock(s.mu);
    auto it = s.live.find(p);
    if (it == s.live.end()) {
      std::free(p);
      return;
    }
    const std::size_t bytes = it->second;
    s.live.erase(it);
    g_in_use.fetch_sub(bytes);
    if (bytes <= s.limit) {
      evicted = make_room(s, bytes);
      s.cached.push_back({p, bytes, ++s.tick});
      s.cached_bytes += bytes;
      p = nullptr;
    }
    if (p != nullptr) evicted.push_back({p, bytes, 0});
  }
  unmap_all(evicted);
}

void* allocate_huge(std::size_t n) {
  const std::size_t bytes = (n + kHugePage - 1) / kHugePage * kHugePage;
  auto& s = state();
  std::size_t got = bytes;
  void* p = nullptr;
  {
    std::lock_guard<std::mutex> lock(s.mu);
    p = take_cached(s, bytes, &got);
    if (p != nullptr) {
      s.live[p] = got;
      g_hits.fetch_add(1);
    }
  }
  if (p == nullptr) {
    p = map_aligned(bytes);
    std::lock_guard<std::mutex> lock(s.mu);
    s.live[p] = got;
  }
  g_in_use.fetch_add(got);
  return p;
}

class HugePageAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(std::size_t n) const override {
    if (n >= g_min_bytes.load() && g_enabled.load()) {
      void* p = allocate_huge(n);
      return {p, p, &release, c10::Device(c10::DeviceType::CPU)};
    }
    void* p = c10::alloc_cpu(n);
    return {p, p, &c10::free_cpu, c10::Device(c10::DeviceType::CPU)};
  }
  // raw_allocate() frees with this, given the data pointer: right for both kinds of block.
  c10::DeleterFnPtr raw_deleter() const override { return &release; }
};

}  // namespace

std::string thp_mode() {
  std::ifstream f("/sys/kernel/mm/transparent_hugepage/enabled");
  std::string line;
  if (!f || !std::getline(f, line)) return "unavailable";
  const auto a = line.find('['), b = line.find(']');
  return a == std::string::npos || b == std::string::npos || b < a ? "unavailable" : line.substr(a + 1, b - a - 1);
}

void install(std::size_t min_bytes) {
  static std::once_flag once;
  g_min_bytes.store(std::max(min_bytes, kHugePage));
  std::call_once(once, [] {
    // Priority above the default (0); the allocator lives for the whole process.
    static HugePageAllocator alloc;
    c10::SetCPUAllocator(&alloc, /*priority=*/1);
  });
  g_enabled.store(true);
}

void set_enabled(bool on) { g_enabled.store(on); }
bool enabled() { return g_enabled.load(); }
std::size_t bytes_in_use() { return g_in_use.load(); }

void set_cache_limit(std::size_t bytes) {
  auto& s = state();
  std::vector<Cached> evicted;
  {
    std::lock_guard<std::mutex> lock(s.mu);
    s.limit = bytes;
    evicted = make_room(s, 0);
  }
  unmap_all(evicted);
}

std::size_t cache_limit() {
  auto& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  return s.limit;
}

std::size_t cached_bytes() {
  auto& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  return s.cached_bytes;
}

std::size_t cache_hits() { return g_hits.load(); }

void release_cached() {
  auto& s = state();
  std::vector<Cached> all;
  {
    std::lock_guard<std::mutex> lock(s.mu);
    all.swap(s.cached);
    s.cached_bytes = 0;
  }
  unmap_all(all);
}

void tune_malloc() {
  // Setting the thresholds also stops glibc's own adjustment of them.
  (void)mallopt(M_MMAP_THRESHOLD, 32 << 20);
  (void)mallopt(M_TRIM_THRESHOLD, 256 << 20);
}

}  // namespace ecdlm::huge_pages
