// The repacked output-lane kernel (kernels/quant_repack.cpp): every format, tail shape (N not a
// multiple of 16, K tails of q8 and q4, 1-15 token rows) against the f64 reference, the fused MoE
// against one expert at a time with repacking on, and the packed-copy cache (shared while the
// weight lives, never served for a freed weight's address).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstring>
#include <string>

#include "ecdlm/io/quant_format.h"
#include "ecdlm/kernels/quant.h"
#include "ecdlm/kernels/quant_backend.h"
#include "ecdlm/kernels/quant_repack.h"
#include "quant_test_util.h"

namespace ecdlm {
namespace {

using io::QuantFormat;
using io::QuantKind;
using kernels::QuantKernel;

const std::vector<QuantFormat>& kFormats = test::kQuantFormats;

using test::RepackOn;

class QuantRepack : public test::NeedsVnni {};

TEST_F(QuantRepack, MatchesReferenceOnEveryTail) {
  torch::manual_seed(31);
  RepackOn on;
  for (const auto& f : kFormats)
    for (int64_t K : {32, 64, 96, 160, 192, 288, 512}) {
      if (K % f.group) continue;
      for (int64_t N : {1, 5, 17, 67, 130}) {
        auto w = torch::randn({N, K}) * 0.05;
        if (K >= 64) w.index_put_({0, torch::indexing::Slice(32, 64)}, 0.0F);  // an all-zero group
        w.index_put_({N - 1, K - 1}, 4.0F);
        const auto q = io::quantize(w, f);
        const auto absw = io::dequantize(q).abs().to(torch::kFloat64);
        for (int64_t M = 1; M < kernels::detail::kPackedLaneMinRows; ++M) {
          // keep the sweep short: one pass (1-8 tokens), two balanced ones (9: 5 + 4, 15: 8 + 7), 3-8
          if (M > 3 && M != 8 && M != 9 && M != 15 && (N != 67 || (M > 17 && M != 47 && M != 63))) continue;
          auto x = torch::randn({M, K});
          x.index_put_({M - 1, 0}, 40.0F);
          const auto y = kernels::quant_linear(x, q, QuantKernel::kVnni);
          const auto ref = kernels::quant_linear_reference(x, q, true);
          const auto bound = torch::matmul(x.abs().to(torch::kFloat64), absw.t()) * 2e-6 + 1e-6;
          EXPECT_LE(((y.to(torch::kFloat64) - ref).abs() - bound).max().item<double>(), 0.0)
              << io::quant_format_name(f) << " M " << M << " N " << N << " K " << K;
        }
      }
    }
}

TEST_F(QuantRepack, FusedMoeEqualsOneExpertAtATime) {
  torch::manual_seed(32);
  RepackOn on;
  // An empty expert, 1-8 rows, one of 17 rows (the token-lane kernel beside the packed ones).
  const std::vector<int64_t> counts = {1, 0, 3, 8, 17, 2};
  int64_t P = 0;
  for (auto c : counts) P += c;
  for (const auto& f : {QuantFormat{QuantKind::kQ8, 32}, QuantFormat{QuantKind::kQ4, 32}, QuantFormat{QuantKind::kQ4Sym, 64}}) {
    const int64_t D = 192, F = 192;  // q4: a 64-input K tail (192 % 128) in both projections
    const test::RandomQuantExperts ex(counts.size(), F, D, f);
    const auto &g = ex.gate, &u = ex.up, &d = ex.down;
    const auto all = ex.view();
    const auto x = torch::randn({P, D});
    const auto y = kernels::quant_moe(x, counts, all, torch::kFloat32, QuantKernel::kVnni);
    int64_t r = 0;
    for (size_t e = 0; e < counts.size(); ++e) {
      if (counts[e] == 0) continue;
      const auto xe = x.narrow(0, r, counts[e]);
      const auto one = kernels::quant_moe(xe, {counts[e]}, {{&g[e]}, {&u[e]}, {&d[e]}}, torch::kFloat32, QuantKernel::kVnni);
      EXPECT_TRUE(torch::equal(y.narrow(0, r, counts[e]), one)) << io::quant_format_name(f) << " expert " << e;
      const auto gv = kernels::quant_linear_reference(xe, g[e], false), uv = kernels::quant_linear_reference(xe, u[e], false);
      const auto ref = torch::matmul(gv / (1 + torch::exp(-gv)) * uv, io::dequantize(d[e]).to(torch::kFloat64).t());
      EXPECT_LT((y.narrow(0, r, counts[e]).to(torch::kFloat64) - ref).abs().max().item<double>(),
                0.02 * ref.abs().max().item<double>() + 1e-6)
          << io::quant_format_name(f) << " expert " << e;
      r += counts[e];
    }
  }
}

// prepack_quant builds the copies up front (in parallel) and the kernels then use those very copies.
TEST_F(QuantRepack, PrepackBuildsTheCopiesTheKernelsUse) {
  torch::manual_seed(34);
  RepackOn on;
  std::vector<io::QuantWeight> ws;
  for (const auto& f : kFormats) ws.push_back(io::quantize(torch::randn({37, 192}) * 0.1, f));  // N % 16, q4 K tail
  std::vector<const io::QuantWeight*> ptrs;
  for (const auto& w : ws) {
    ptrs.push_back(&w);
    EXPECT_FALSE(kernels::detail::has_packed(w));
  }
  const size_t arena0 = kernels::detail::pack_arena_bytes();
  kernels::prepack_quant(ptrs);
  // The copies sit in one huge-page region (2 MB), which lives while they do.
  EXPECT_EQ(kernels::detail::pack_arena_bytes(), arena0 + (size_t{2} << 20));
  const auto x = torch::randn({3, 192});
  for (const auto& w : ws) {
    EXPECT_TRUE(kernels::detail::has_packed(w)) << io::quant_format_name(w.format);
    EXPECT_EQ(kernels::detail::packed(w)->NB, 3);
    const auto y = kernels::quant_linear(x, w, QuantKernel::kVnni);
    EXPECT_LT((y.to(torch::kFloat64) - kernels::quant_linear_reference(x, w, true)).abs().max().item<double>(), 1e-3)
        << io::quant_format_name(w.format);
  }
}

// Building a copy (at load or on first use) hands the weight's row layout back to the kernel
// (MADV_PAGEOUT), which never loses data: the rows still read the same bytes (here anonymous memory,
// at most swapped; a mapped file's pages fault back from it), and the row-layout kernels give the
// same results after. q4 with a K % 128 tail keeps its rows.
TEST_F(QuantRepack, CopiesHandTheRowLayoutBackWithoutLosingIt) {
  torch::manual_seed(35);
  const auto x = torch::randn({3, 1024});
  for (const auto& f : kFormats) {
    const auto w = io::quantize(torch::randn({512, 1024}) * 0.1, f);  // 256-512 KB of codes: whole pages
    const auto q0 = w.qweight.clone(), d0 = w.scales.clone();
    const auto y0 = kernels::quant_linear(x, w, QuantKernel::kAvx2);
    const int64_t r0 = kernels::quant_rows_released();
    {
      RepackOn on;
      (void)kernels::detail::packed(w);  // first use
    }
    EXPECT_GE(kernels::quant_rows_released() - r0, w.qweight.nbytes() - 8192) << io::quant_format_name(f);
    EXPECT_TRUE(torch::equal(w.qweight, q0)) << io::quant_format_name(f);
    EXPECT_TRUE(torch::equal(w.scales, d0)) << io::quant_format_name(f);
    EXPECT_TRUE(torch::equal(kernels::quant_linear(x, w, QuantKernel::kAvx2), y0)) << io::quant_format_name(f);
  }
  const auto tail = io::quantize(torch::randn({512, 1056}) * 0.1, {io::QuantKind::kQ4, 32});  // K % 128 = 32
  const int64_t r0 = kernels::quant_rows_released();
  RepackOn on;
  (void)kernels::detail::packed(tail);
  EXPECT_EQ(kernels::quant_rows_released(), r0);
}

// The arena: allocations inside a scope share its region (64-byte aligned) until it is used up, then
// come from the heap; the region is unmapped when the scope has closed and its last block is freed.
TEST(PackArena, RegionLivesUntilItsLastBlockIsFreed) {
  namespace d = kernels::detail;
  const size_t base = d::pack_arena_bytes(), mb = size_t{1} << 20;
  std::vector<char*> in_region;
  char* heap = nullptr;
  {
    const d::PackArenaScope scope(3 * mb);  // rounded up to 4 MB
    EXPECT_EQ(d::pack_arena_bytes(), base + 4 * mb);
    for (size_t n : {mb, mb + 1, mb - 64}) in_region.push_back(static_cast<char*>(d::pack_alloc(n)));
    heap = static_cast<char*>(d::pack_alloc(2 * mb));  // 3 MB + 64 B used: no room for 2 MB
    for (char* p : in_region) {
      EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % 64, 0U);
      EXPECT_GE(p, in_region[0]);
      EXPECT_LT(p, in_region[0] + 4 * mb);
    }
    EXPECT_EQ(in_region[1] - in_region[0], static_cast<ptrdiff_t>(mb));
    EXPECT_EQ(in_region[2] - in_region[1], static_cast<ptrdiff_t>(mb + 64));
    EXPECT_TRUE(heap < in_region[0] || heap >= in_region[0] + 4 * mb);
    for (char* p : in_region) std::memset(p, 7, mb - 64);
  }
  EXPECT_EQ(d::pack_arena_bytes(), base + 4 * mb);  // closed, blocks still live
  d::pack_free(in_region[0], mb);
  d::pack_free(in_region[1], mb + 1);
  EXPECT_EQ(d::pack_arena_bytes(), base + 4 * mb);
  d::pack_free(in_region[2], mb - 64);
  EXPECT_EQ(d::pack_arena_bytes(), base);
  d::pack_free(heap, 2 * mb);
  // Values given to a vector on the allocator are constructed (only value-initialization is skipped).
  std::vector<uint8_t, d::PackAlloc<uint8_t>> v(16, 3);
  EXPECT_EQ(v[15], 3);
}

// A scope opened inside another (a model load inside reserve_quant_copies' process-long region)
// serves its own region, and closing it reopens the outer one.
TEST(PackArena, ScopesNest) {
  namespace d = kernels::detail;
  const size_t mb = size_t{1} << 20;
  const d::PackArenaScope outer(2 * mb);
  char* a = static_cast<char*>(d::pack_alloc(mb));
  char *b = nullptr, *c = nullptr;
  {
    const d::PackArenaScope inner(2 * mb);
    b = static_cast<char*>(d::pack_alloc(mb));
    EXPECT_TRUE(b < a || b >= a + 2 * mb);  // the inner region, not the outer's free half
  }
  c = static_cast<char*>(d::pack_alloc(mb));
  EXPECT_EQ(c - a, static_cast<ptrdiff_t>(mb));  // the outer region again, right after a
  for (char* p : {a, b, c}) d::pack_free(p, mb);
}

TEST_F(QuantRepack, CacheSharesWhileTheWeightLivesAndNeverServesAFreedOne) {
  torch::manual_seed(33);
  RepackOn on;
  const QuantFormat f{QuantKind::kQ8, 32};
  const auto q = io::quantize(torch::randn({48, 64}), f);
  const auto p = kernels::detail::packed(q);
  EXPECT_EQ(p.get(), kernels::detail::packed(q).get());
  io::QuantWeight copy = q;  // shares the storage
  EXPECT_EQ(p.get(), kernels::detail::packed(copy).get());
  EXPECT_EQ(p->NB, 3);
  // Weights made and freed one after another (the allocator reuses addresses): each result is its own.
  const auto x = torch::randn({2, 64});
  for (int i = 0; i < 8; ++i) {
    const auto w = io::quantize(torch::randn({48, 64}), f);
    const auto y = kernels::quant_linear(x, w, QuantKernel::kVnni);
    EXPECT_LT((y.to(torch::kFloat64) - kernels::quant_linear_reference(x, w, true)).abs().max().item<double>(), 1e-3)
        << "weight " << i;
  }
}

}  // namespace
}  // namespace ecdlm
