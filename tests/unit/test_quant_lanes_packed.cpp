// The token-lane kernel reading the packed output-lane copy in place (kernels/quant_lanes_packed.cpp):
// bit-identical to the panel kernel on the row layout (same int32 group sums, same f32 steps) on
// every format, group, N and K tail (q4's unpacked K % 128 tail), 16-40 token rows and unaligned
// row ranges, and within the f64 reference's bound; the drivers (quant_linear, quant_moe) take it
// with repacking on and give the same bits as with repacking off; the few-row kernel's paired
// blocks give the bits of single ones.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>
#include <vector>

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
namespace kd = kernels::detail;
using test::awkward_weight;

const std::vector<QuantFormat>& kFormats = test::kQuantFormats;

using test::RepackOn;

class QuantLanesPacked : public test::NeedsVnni {};

// Direct calls: the same lanes through the panel kernel and the packed one, over row ranges that
// start inside a 16-row block and end in a partial one.
TEST_F(QuantLanesPacked, BitIdenticalToThePanelKernel) {
  torch::manual_seed(41);
  kd::QxScratch xbuf;
  kd::QxLaneScratch lbuf;
  for (const auto& f : kFormats)
    // K tails for q4 (K % 128): 160 -> 32, 96 -> 96, 192 -> 64, 352 -> 96; 2048: none.
    for (int64_t K : {96, 160, 192, 352, 2048}) {
      if (K % f.group) continue;
      for (int64_t N : {17, 67, 130}) {
        const auto w = io::quantize(awkward_weight(N, K), f);
        const auto pk = kd::packed(w);
        const auto panel = kd::weight_operand(w);
        auto packed = panel;
        packed.packed = pk.get();
        const int32_t z = kd::vnni_zero_point(f.kind);
        for (int64_t M : {16, 17, 23, 32, 33, 40}) {
          if (K == 2048 && M != 17 && M != 40) continue;  // keep the sweep short
          auto x = torch::randn({M, K});
          x.index_put_({M - 1, 0}, 40.0F);
          const auto st = xbuf.store(M, K, f.group);
          for (int64_t m = 0; m < M; ++m) kd::quantize_row(x[m].data_ptr<float>(), K, st, m, 0, z);
          const auto xl = kd::build_lanes(st.view(), z, lbuf);
          for (auto [n0, n1] : {std::pair<int64_t, int64_t>{0, N}, {5, N}, {N > 64 ? 37 : 3, N - 1}}) {
            auto a = torch::full({M, n1 - n0}, -1.0F), b = torch::full({M, n1 - n0}, -2.0F);
            kd::vnni_lane_rows(xl, panel, n0, n1, a.data_ptr<float>(), n1 - n0);
            kd::vnni_lane_rows(xl, packed, n0, n1, b.data_ptr<float>(), n1 - n0);
            EXPECT_TRUE(torch::equal(a, b)) << io::quant_format_name(f) << " K " << K << " N " << N << " M " << M
                                            << " rows " << n0 << ".." << n1 << " max |d| "
                                            << (a - b).abs().max().item<float>();
          }
        }
      }
    }
}

// quant_linear at 16-300 rows with repacking on (the few-row kernel below kPackedLaneMinRows, the
// packed lane kernel from there, in passes of 128 tokens above 128) against repacking off (the
// panel kernel, bit for bit) and the f64 reference.
TEST_F(QuantLanesPacked, QuantLinearTakesItAndMatchesTheReference) {
  torch::manual_seed(42);
  for (const auto& f : kFormats)
    for (int64_t K : {64, 160, 192, 2048}) {
      if (K % f.group) continue;
      for (int64_t N : {5, 67}) {
        const auto w = io::quantize(awkward_weight(N, K), f);
        const auto absw = io::dequantize(w).abs().to(torch::kFloat64);
        for (int64_t M : {16, 24, 40, 65, 128, 129, 300}) {
          auto x = torch::randn({M, K});
          x.index_put_({M - 1, 0}, 40.0F);
          const auto off = kernels::quant_linear(x, w, QuantKernel::kVnni);
          torch::Tensor on;
          {
            RepackOn r;
            on = kernels::quant_linear(x, w, QuantKernel::kVnni);
          }
          const std::string what = io::quant_format_name(f) + " K " + std::to_string(K) + " N " + std::to_string(N) +
                                   " M " + std::to_string(M);
          EXPECT_TRUE(kd::has_packed(w)) << what;
          EXPECT_TRUE(torch::equal(off, on)) << what;
          {  // auto takes the int8 kernels at any row count once the copy is there (the prefill too)
            RepackOn r;
            EXPECT_TRUE(torch::equal(kernels::quant_linear(x, w), on)) << what;
          }
          const auto ref = kernels::quant_linear_reference(x, w, true);
          const auto bound = torch::matmul(x.abs().to(torch::kFloat64), absw.t()) * 2e-6 + 1e-6;
          EXPECT_LE(((on.to(torch::kFloat64) - ref).abs() - bound).max().item<double>(), 0.0) << what;
        }
      }
    }
}

// The fused MoE with repacking on: experts of kPackedLaneMinRows+ rows run the packed lane kernel,
// those of 16-63 the packed few-row kernel, and both give the bits repacking off gives there (the
// panel kernel, from 16 rows).
TEST_F(QuantLanesPacked, FusedMoeWideExpertsSameBitsAsWithoutRepacking) {
  torch::manual_seed(43);
  const std::vector<int64_t> counts = {kd::kPackedLaneMinRows, 3, 0, kd::kPackedLaneMinRows + 17, 21, 16};
  int64_t P = 0;
  for (auto c : counts) P += c;
  for (const auto& f : {QuantFormat{QuantKind::kQ8, 32}, QuantFormat{QuantKind::kQ4, 32}, QuantFormat{QuantKind::kQ4, 64},
                        QuantFormat{QuantKind::kQ4Sym, 32}}) {
    // q4: K tails (K % 128) of 32 and 96 at G 32, of 64 at G 64, in gate / up and in down
    const int64_t D = f.group == 32 ? 160 : 192, F = f.group == 32 ? 224 : 320;
    const test::RandomQuantExperts ex(counts.size(), F, D, f);
    const auto &g = ex.gate, &u = ex.up, &d = ex.down;
    const auto all = ex.view();
    const auto x = torch::randn({P, D});
    const auto off = kernels::quant_moe(x, counts, all, torch::kBFloat16, QuantKernel::kVnni);
    torch::Tensor on;
    {
      RepackOn r;
      on = kernels::quant_moe(x, counts, all, torch::kBFloat16, QuantKernel::kVnni);
    }
    int64_t r = 0;
    for (size_t e = 0; e < counts.size(); ++e) {
      if (counts[e] >= kd::kLaneMinRows) {
        EXPECT_TRUE(kd::has_packed(g[e]) && kd::has_packed(u[e]) && kd::has_packed(d[e])) << "expert " << e;
        EXPECT_TRUE(torch::equal(off.narrow(0, r, counts[e]), on.narrow(0, r, counts[e])))
            << io::quant_format_name(f) << " expert " << e;
      }
      r += counts[e];
    }
  }
}

}  // namespace
}  // namespace ecdlm

namespace ecdlm {
namespace {
// A served row's product must not depend on its batch (continuous batching): on the copies, a
// token row alone (the few-row kernel) and inside 16-300 rows (the few-row kernel's passes of 8
// tokens below 64 rows, the token-lane kernel's passes of 128 from there) gives the same bits, in
// every format.
TEST_F(QuantLanesPacked, RowAloneAndInABatchGiveTheSameBits) {
  torch::manual_seed(44);
  RepackOn on;
  for (const auto& f : kFormats) {
    const auto w = io::quantize(awkward_weight(67, 256), f);
    const auto x = torch::randn({300, 256});
    for (int64_t M : {3, 16, 40, 129, 300}) {
      const auto batch = kernels::quant_linear(x.narrow(0, 0, M), w);
      for (int64_t m : {int64_t{0}, M / 2, M - 1})
        EXPECT_TRUE(torch::equal(batch[m], kernels::quant_linear(x.narrow(0, m, 1), w)[0]))
            << io::quant_format_name(f) << " M " << M << " row " << m;
    }
    // The fused SwiGLU experts: an expert's row alone and among 3-150 rows of it.
    const test::RandomQuantExperts ex(2, 128, 256, f);
    const auto xs = torch::randn({151, 256}).to(torch::kBFloat16);
    for (int64_t M : {3, 20, 70, 150}) {
      const auto batch = kernels::quant_moe(xs.narrow(0, 0, M + 1), {1, M}, ex.view(), torch::kBFloat16);
      for (int64_t m : {int64_t{1}, M / 2 + 1, M}) {
        const auto alone =
            kernels::quant_moe(torch::cat({xs.narrow(0, 0, 1), xs.narrow(0, m, 1)}), {1, 1}, ex.view(), torch::kBFloat16);
        EXPECT_TRUE(torch::equal(batch[m], alone[1])) << io::quant_format_name(f) << " experts, M " << M << " row " << m;
      }
    }
  }
}

// Where the drivers switch from the few-row kernel to the token lanes (kPackedLaneMinRows) is a
// speed choice only: at 16-70 rows both kernels give the same bits, a linear and the fused experts
// alike, in every format, K % 128 tails (q4) included.
TEST_F(QuantLanesPacked, FewRowKernelAndTokenLanesGiveTheSameBits) {
  torch::manual_seed(45);
  RepackOn on;
  struct Limit {  // the copies' switch, put back whatever happens
    explicit Limit(int64_t rows) { kd::set_packed_lane_min_rows(rows); }
    ~Limit() { kd::set_packed_lane_min_rows(kd::kPackedLaneMinRows); }
  };
  for (const auto& f : kFormats)
    for (int64_t K : {256, 320}) {
      if (K % f.group) continue;
      const auto w = io::quantize(awkward_weight(67, K), f);
      const test::RandomQuantExperts ex(2, 192, K, f);
      for (int64_t M : {16, 17, 24, 40, 63, 70}) {
        const auto x = torch::randn({M, K});
        const auto xs = torch::randn({M + 3, K}).to(torch::kBFloat16);
        torch::Tensor few, few_moe;
        {
          Limit l(1 << 20);
          few = kernels::quant_linear(x, w);
          few_moe = kernels::quant_moe(xs, {3, M}, ex.view(), torch::kBFloat16);
        }
        Limit l(16);
        const auto what = io::quant_format_name(f) + " K " + std::to_string(K) + " M " + std::to_string(M);
        EXPECT_TRUE(torch::equal(few, kernels::quant_linear(x, w))) << what;
        EXPECT_TRUE(torch::equal(few_moe, kernels::quant_moe(xs, {3, M}, ex.view(), torch::kBFloat16))) << what;
      }
    }
}

// Two 16-row blocks at a time (from kPackedPairMinRows token rows; one broadcast feeds both) is
// a speed choice only: against one block at a time, the same bits at 1-63 rows, on every format,
// an odd block count and a partial last block, and q4 weights with a K % 128 tail (which keep the
// single blocks).
TEST_F(QuantLanesPacked, PairedBlocksGiveTheSameBitsAsSingleBlocks) {
  torch::manual_seed(46);
  struct Limit {  // put back whatever happens
    explicit Limit(int64_t rows) { kd::set_packed_pair_min_rows(rows); }
    ~Limit() { kd::set_packed_pair_min_rows(kd::kPackedPairMinRows); }
  };
  kd::QxScratch xbuf;
  for (const auto& f : kFormats)
    for (int64_t K : {256, 320}) {
      if (K % f.group) continue;
      for (int64_t N : {32, 40, 67}) {
        const auto w = io::quantize(awkward_weight(N, K), f);
        const auto pk = kd::packed(w);
        auto wo = kd::weight_operand(w);
        wo.packed = pk.get();
        const int32_t z = kd::vnni_zero_point(f.kind);
        for (int64_t M : {1, 3, 8, 9, 17, 32, 63}) {
          auto x = torch::randn({M, K});
          x.index_put_({M - 1, 0}, 40.0F);
          const auto st = xbuf.store(M, K, f.group);
          for (int64_t m = 0; m < M; ++m) kd::quantize_row(x[m].data_ptr<float>(), K, st, m, 0, z);
          for (auto [n0, n1] : {std::pair<int64_t, int64_t>{0, N}, {16, N}}) {
            auto one = torch::full({M, n1 - n0}, -1.0F), two = torch::full({M, n1 - n0}, -2.0F);
            {
              Limit l(int64_t{1} << 40);
              kd::vnni_packed_rows(st.view(), *pk, wo, n0, n1, one.data_ptr<float>(), n1 - n0);
            }
            Limit l(1);
            kd::vnni_packed_rows(st.view(), *pk, wo, n0, n1, two.data_ptr<float>(), n1 - n0);
            EXPECT_TRUE(torch::equal(one, two)) << io::quant_format_name(f) << " K " << K << " N " << N << " M " << M
                                                << " rows " << n0 << ".." << n1 << " max |d| "
                                                << (one - two).abs().max().item<float>();
          }
        }
      }
    }
}

}  // namespace
}  // namespace ecdlm
