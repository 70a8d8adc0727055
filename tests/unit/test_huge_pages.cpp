// util/huge_pages.h: large CPU tensors go to 2 MB-aligned, huge-page-advised blocks that are
// accounted and released; small ones and disabled periods keep libtorch's own allocation.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdint>
#include <fstream>
#include <string>

#include "ecdlm/util/huge_pages.h"

namespace ecdlm::huge_pages {
namespace {

constexpr std::size_t kMiB = std::size_t{1} << 20;

bool aligned_2mb(const torch::Tensor &t) { return reinterpret_cast<std::uintptr_t>(t.data_ptr()) % (2 * kMiB) == 0; }

TEST(HugePages, LargeTensorsAreAlignedAccountedAndReleased) {
  install(4 * kMiB);
  release_cached();  // a cached block may be larger than asked, which the byte counts below would see
  const auto before = bytes_in_use();
  {
    auto big = torch::empty({5 * static_cast<int64_t>(kMiB) / 4},
                            torch::kFloat32);  // 5 MiB
    EXPECT_TRUE(aligned_2mb(big));
    EXPECT_EQ(bytes_in_use(),
              before + 6 * kMiB);  // rounded up to whole 2 MB pages
    big.copy_(torch::arange(big.numel(), torch::kFloat32));
    EXPECT_EQ(big[big.numel() - 1].item<float>(), static_cast<float>(big.numel() - 1));
    auto small = torch::empty({1024}, torch::kFloat32);
    EXPECT_EQ(bytes_in_use(), before + 6 * kMiB);
  }
  EXPECT_EQ(bytes_in_use(), before);
}

TEST(HugePages, DisabledAllocationsStayPlain) {
  install(4 * kMiB);
  release_cached();  // a cached block may be larger than asked, which the byte counts below would see
  const auto before = bytes_in_use();
  set_enabled(false);
  auto plain = torch::zeros({8 * static_cast<int64_t>(kMiB)}, torch::kUInt8);
  set_enabled(true);
  EXPECT_EQ(bytes_in_use(), before);
  auto huge = torch::zeros({8 * static_cast<int64_t>(kMiB)}, torch::kUInt8);
  EXPECT_EQ(bytes_in_use(), before + 8 * kMiB);
  // Both free the same way, whichever allocator made them.
  plain = torch::Tensor();
  huge = torch::Tensor();
  EXPECT_EQ(bytes_in_use(), before);
}

TEST(HugePages, FreedBlocksAreReusedUpToTheCacheLimit) {
  install(4 * kMiB);
  const auto saved_limit = cache_limit();
  release_cached();
  set_cache_limit(20 * kMiB);
  auto mib = [](std::size_t n) { return torch::empty({static_cast<int64_t>(n * kMiB)}, torch::kUInt8); };

  auto a = mib(16);
  void *const a_ptr = a.data_ptr();
  a = torch::Tensor();
  EXPECT_EQ(cached_bytes(), 16 * kMiB);
  const auto hits = cache_hits();
  auto b = mib(15);  // rounds to 16 MiB: served from the freed block, which counts as in use again
  EXPECT_EQ(b.data_ptr(), a_ptr);
  EXPECT_EQ(cache_hits(), hits + 1);
  EXPECT_EQ(cached_bytes(), 0u);
  auto smaller = mib(4);  // 16 MiB is more than a quarter (and 4 MiB) too large for 4 MiB
  EXPECT_NE(smaller.data_ptr(), a_ptr);
  b = torch::Tensor();
  smaller = torch::Tensor();
  EXPECT_EQ(cached_bytes(), 20 * kMiB);

  // Over the limit the oldest blocks go first; a block larger than the limit is never kept.
  auto c = mib(8), d = mib(8), e = mib(8);
  void *const e_ptr = e.data_ptr();
  c = torch::Tensor();
  d = torch::Tensor();
  e = torch::Tensor();
  EXPECT_EQ(cached_bytes(), 16 * kMiB);
  auto f = mib(8);
  auto g = mib(8);
  EXPECT_TRUE(f.data_ptr() == e_ptr || g.data_ptr() == e_ptr);  // the newest survived
  auto huge = mib(24);
  huge = torch::Tensor();
  EXPECT_EQ(cached_bytes(), 0u);

  f = torch::Tensor();
  g = torch::Tensor();
  set_cache_limit(0);
  EXPECT_EQ(cached_bytes(), 0u);
  set_cache_limit(saved_limit);
}

TEST(HugePages, KernelBacksTouchedBlocksWithHugePages) {
  if (thp_mode() == "never" || thp_mode() == "unavailable") GTEST_SKIP() << "THP " << thp_mode();
  install(4 * kMiB);
  auto read_anon_huge_kb = [] {
    std::ifstream f("/proc/self/smaps_rollup");
    std::string key;
    long long v = 0;
    while (f >> key) {
      if (key == "AnonHugePages:") {
        f >> v;
        return v;
      }
    }
    return -1LL;
  };
  const auto before = read_anon_huge_kb();
  if (before < 0) GTEST_SKIP() << "no /proc/self/smaps_rollup";
  auto t = torch::ones({64 * static_cast<int64_t>(kMiB)},
                       torch::kUInt8);  // touched: faults now
  const auto after = read_anon_huge_kb();
  // The kernel may fall back to 4 KB pages when memory is fragmented; most of 64 MiB still maps.
  EXPECT_GE(after - before, 32 * 1024) << "AnonHugePages " << before << " -> " << after << " kB";
}

}  // namespace
}  // namespace ecdlm::huge_pages
