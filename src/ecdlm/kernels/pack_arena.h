// Storage for the packed weight copies (quant_repack.cpp). prepack_quant builds thousands of 0.5-2 MB
// copies at load; from malloc every copy faults its fresh 4 KB pages one by one, which in this
// guest costs ~4 ms per MB. Copies built inside a PackArenaScope take their bytes from one region
// advised MADV_HUGEPAGE instead (2 MB faults). The region lives until its last copy is freed.
#pragma once
#include <cstddef>
#include <cstdint>
#include <new>

namespace ecdlm::kernels::detail {

// While alive, pack_alloc serves requests from one region of `bytes` (rounded up to 2 MB) until it
// is used up, from any thread. Scopes nest: closing one reopens the region it displaced (a model
// load's copies inside the process-long region of reserve_quant_copies).
class PackArenaScope {
 public:
  explicit PackArenaScope(std::size_t bytes);
  ~PackArenaScope();
  PackArenaScope(const PackArenaScope&) = delete;
  PackArenaScope& operator=(const PackArenaScope&) = delete;

 private:
  void* region_ = nullptr;  // this scope's region (null: none could be mapped)
  void* prev_ = nullptr;    // the region open before it
};

void* pack_alloc(std::size_t bytes);      // 64-byte aligned; the open arena's, else the heap's
void pack_free(void* p, std::size_t bytes);
std::size_t pack_arena_bytes();           // bytes of live arena regions (tests, logs)

// std::vector allocator over pack_alloc; elements are default-initialized (the builder writes every
// byte, so zero-filling first would touch each page twice).
template <class T>
struct PackAlloc {
  using value_type = T;
  PackAlloc() = default;
  template <class U>
  PackAlloc(const PackAlloc<U>&) {}  // NOLINT: allocators convert implicitly
  T* allocate(std::size_t n) { return static_cast<T*>(pack_alloc(n * sizeof(T))); }
  void deallocate(T* p, std::size_t n) { pack_free(p, n * sizeof(T)); }
  template <class U>
  void construct(U* p) noexcept {
    ::new (static_cast<void*>(p)) U;
  }
  template <class U, class... A>
  void construct(U* p, A&&... a) {
    ::new (static_cast<void*>(p)) U(static_cast<A&&>(a)...);
  }
  template <class U>
  bool operator==(const PackAlloc<U>&) const {
    return true;
  }
  template <class U>
  bool operator!=(const PackAlloc<U>&) const {
    return false;
  }
};

}  // namespace ecdlm::kernels::detail
