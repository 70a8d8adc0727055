#include "ecdlm/util/huge_pages.h"

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>
#include <sys/mman.h>

#include <atomic>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <new>
#include <unordered_map>

namespace ecdlm::huge_pages {
namespace {

constexpr std::size_t kHugePage = std::size_t{2} << 20;

std::atomic<bool> g_enabled{false};
std::atomic<std::size_t> g_min_bytes{std::size_t{4} << 20};
std::atomic<std::size_t> g_in_use{0};

// Sizes of the live huge blocks, for the accounting. Both kinds of block come from posix_memalign,
// so free() releases either.
std::mutex g_mu;
std::unordered_map<void*, std::size_t>& huge_blocks() {
  static std::unordered_map<void*, std::size_t> m;
  return m;
}

void release(void* p) {
  if (p == nullptr) return;
  {
    std::lock_guard<std::mutex> lock(g_mu);
    auto it = huge_blocks().find(p);
    if (it != huge_blocks().end()) {
      g_in_use.fetch_sub(it->second);
      huge_blocks().erase(it);
    }
  }
  std::free(p);
}

class HugePageAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(std::size_t n) const override {
    if (n >= g_min_bytes.load() && g_enabled.load()) {
      const std::size_t bytes = (n + kHugePage - 1) / kHugePage * kHugePage;
      void* p = nullptr;
      if (posix_memalign(&p, kHugePage, bytes) != 0 || p == nullptr) throw std::bad_alloc();
      // Before first touch, so the faults take whole 2 MB pages. Advice only: failure is harmless.
      (void)madvise(p, bytes, MADV_HUGEPAGE);
      {
        std::lock_guard<std::mutex> lock(g_mu);
        huge_blocks()[p] = bytes;
      }
      g_in_use.fetch_add(bytes);
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

}  // namespace ecdlm::huge_pages
