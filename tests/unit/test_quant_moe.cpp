// The fused quantized MoE kernel (kernels/quant.h quant_moe) and its activation helpers: the
// AVX512 row quantizer, SiLU and bf16 rounding against their scalar twins; all experts in one
// region against one expert at a time (bit for bit) and against the f64 reference composition,
// on every path this CPU has, with K tails (q8 % 64, q4 % 128), F tails of the 64-row units,
// empty experts and both output dtypes.
#include <ATen/Parallel.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <c10/util/BFloat16.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "ecdlm/io/quant_format.h"
#include "ecdlm/kernels/quant.h"
#include "ecdlm/kernels/quant_backend.h"
#include "ecdlm/util/error.h"

namespace ecdlm {
namespace {

using io::QuantFormat;
using io::QuantKind;
using io::QuantWeight;
using kernels::QuantKernel;

bool has(QuantKernel k) {
  if (k == QuantKernel::kVnni) return kernels::cpu_has_avx512_vnni();
  if (k == QuantKernel::kAvx2) return kernels::cpu_has_avx2();
  return true;
}

TEST(QuantMoeHelpers, Avx512RowQuantizerEqualsScalar) {
  if (!kernels::cpu_has_avx512_vnni()) GTEST_SKIP() << "no AVX512-VNNI";
  torch::manual_seed(21);
  for (int64_t G : {32, 64}) {
    for (int32_t z : {0, 8, 128}) {
      const int64_t M = 3, K = 4 * G;
      auto x = torch::randn({M, K}) * 3;
      x.index_put_({1, torch::indexing::Slice(0, G)}, 0.0F);  // an all-zero group
      x.index_put_({2, 5}, 1e4F);                              // an outlier
      x.index_put_({0, torch::indexing::Slice(G, 2 * G)}, 0.5F);  // exact ties at ±63.5 after scaling
      x.index_put_({0, G}, -1.0F);
      kernels::detail::QxScratch a, b;
      const auto sa = a.store(M, K, G), sb = b.store(M, K, G);
      for (int64_t m = 0; m < M; ++m)
        for (int64_t k0 : {int64_t{0}, 2 * G}) {  // two calls per row: at input 0 and at 2G
          const float* v = x.data_ptr<float>() + m * K + k0;
          kernels::detail::quantize_row_scalar(v, 2 * G, sa, m, k0, z);
          kernels::detail::avx512_quantize_row(v, 2 * G, sb, m, k0, z);
        }
      EXPECT_EQ(0, std::memcmp(sa.q, sb.q, size_t(M * K))) << "G " << G << " z " << z;
      EXPECT_EQ(0, std::memcmp(sa.d, sb.d, sizeof(float) * size_t(M * K / G)));
      EXPECT_EQ(0, std::memcmp(sa.c, sb.c, sizeof(float) * size_t(M * K / G)));
      EXPECT_EQ(0, std::memcmp(sa.s, sb.s, sizeof(float) * size_t(M * K / 4)));
      EXPECT_EQ(0, std::memcmp(sa.bias, sb.bias, sizeof(int32_t) * size_t(M * K / 4)));
      EXPECT_EQ(0, std::memcmp(sa.gb, sb.gb, sizeof(int32_t) * size_t(M * K / G)));
    }
  }
}

TEST(QuantMoeHelpers, Avx512SiluAndBf16RoundingMatchScalar) {
  if (!kernels::cpu_has_avx512_vnni()) GTEST_SKIP() << "no AVX512-VNNI";
  torch::manual_seed(22);
  const int64_t n = 37;  // a masked tail
  auto g = torch::randn({n}) * 4, u = torch::randn({n});
  g.index_put_({0}, 100.0F);
  g.index_put_({1}, -100.0F);
  auto gs = g.clone(), gv = g.clone();
  kernels::detail::silu_mul_scalar(gs.data_ptr<float>(), u.data_ptr<float>(), n);
  kernels::detail::avx512_silu_mul(gv.data_ptr<float>(), u.data_ptr<float>(), n);
  EXPECT_TRUE(torch::allclose(gs, gv, 1e-6, 1e-7));
  std::vector<float> y = {1.0F, -2.5F, 1.00390625F /* tie: even */, 1.01171875F /* tie: up */, 3e38F, -0.0F,
                          std::numeric_limits<float>::infinity(), std::numeric_limits<float>::quiet_NaN(),
                          1e-40F /* subnormal */};
  for (int i = 0; i < 30; ++i) y.push_back(std::ldexp(static_cast<float>(i * 2654435761U % 100000) - 5e4F, i - 20));
  std::vector<uint16_t> a(y.size()), b(y.size());
  kernels::detail::round_bf16_scalar(y.data(), int64_t(y.size()), a.data());
  kernels::detail::avx512_round_bf16_f(y.data(), int64_t(y.size()), b.data());
  EXPECT_EQ(a, b);
}

class QuantMoeTest : public ::testing::TestWithParam<QuantKernel> {
 protected:
  void SetUp() override {
    if (!has(GetParam())) GTEST_SKIP() << "this CPU has no " << kernels::quant_kernel_name(GetParam());
  }
};

struct Experts {
  std::vector<QuantWeight> gate, up, down;
  kernels::QuantExperts view(size_t i0, size_t i1) const {
    kernels::QuantExperts e;
    for (size_t i = i0; i < i1; ++i) {
      e.gate.push_back(&gate[i]);
      e.up.push_back(&up[i]);
      e.down.push_back(&down[i]);
    }
    return e;
  }
};

Experts make_experts(int64_t E, int64_t D, int64_t F, QuantFormat f) {
  Experts ex;
  for (int64_t e = 0; e < E; ++e) {
    ex.gate.push_back(io::quantize(torch::randn({F, D}) * 0.1, f));
    ex.up.push_back(io::quantize(torch::randn({F, D}) * 0.1, f));
    ex.down.push_back(io::quantize(torch::randn({D, F}) * 0.1, f));
  }
  return ex;
}

// f64 reference: exact x (f32 or bf16), h = silu(g) · u in f64, exact h.
torch::Tensor reference(const torch::Tensor& x, const QuantWeight& g, const QuantWeight& u, const QuantWeight& d) {
  const auto gv = kernels::quant_linear_reference(x, g, false), uv = kernels::quant_linear_reference(x, u, false);
  const auto h = gv / (1 + torch::exp(-gv)) * uv;
  return torch::matmul(h, io::dequantize(d).to(torch::kFloat64).t());
}

TEST_P(QuantMoeTest, AllExpertsAtOnceEqualOneByOneAndMatchTheReference) {
  torch::manual_seed(23);
  const std::vector<int64_t> counts = {1, 0, 3, 5, 2, 17, 4};  // an empty expert, M = 17 (tile tails)
  int64_t P = 0;
  for (auto c : counts) P += c;
  struct Shape {
    QuantFormat f;
    int64_t D, F;
  };
  // D 160: a q8 K tail of 32 (gate/up); q4's 192 % 128 = 64 tail; F 96 / 160: a 32-row unit tail and
  // down's K tails; g64 with F 192 (three 64-row units).
  for (const auto& s : {Shape{{QuantKind::kQ8, 32}, 160, 96}, Shape{{QuantKind::kQ4, 32}, 192, 160},
                        Shape{{QuantKind::kQ4Sym, 64}, 128, 192}, Shape{{QuantKind::kQ8, 64}, 192, 128}}) {
    const auto ex = make_experts(int64_t(counts.size()), s.D, s.F, s.f);
    const auto x = torch::randn({P, s.D});
    for (auto out : {torch::kFloat32, torch::kBFloat16}) {
      for (const auto& xin : {x, x.to(torch::kBFloat16)}) {
        const std::string what = io::quant_format_name(s.f) + (out == torch::kFloat32 ? " f32" : " bf16") + " out, " +
                                 (xin.scalar_type() == torch::kFloat32 ? "f32" : "bf16") + " x";
        const auto y = kernels::quant_moe(xin, counts, ex.view(0, counts.size()), out, GetParam());
        ASSERT_EQ(y.scalar_type(), out);
        ASSERT_EQ(y.sizes(), (std::vector<int64_t>{P, s.D}));
        int64_t r = 0;
        for (size_t i = 0; i < counts.size(); ++i) {
          if (counts[i] == 0) continue;
          const auto xi = xin.narrow(0, r, counts[i]);
          const auto one = kernels::quant_moe(xi, {counts[i]}, ex.view(i, i + 1), out, GetParam());
          EXPECT_TRUE(torch::equal(y.narrow(0, r, counts[i]), one)) << what << " expert " << i;
          const auto ref = reference(xi, ex.gate[i], ex.up[i], ex.down[i]);
          // int8 activations (x and h, ~0.4% each per group) and bf16 rounding: 2% of the largest output.
          const double tol = 0.02 * ref.abs().max().item<double>() + 1e-6;
          EXPECT_LT((y.narrow(0, r, counts[i]).to(torch::kFloat64) - ref).abs().max().item<double>(), tol)
              << what << " expert " << i;
          r += counts[i];
        }
      }
    }
  }
}

// Experts with kLaneMinRows rows or more (a dense MLP or shared expert at a 32-token block) run
// the token-lane kernel on vnni: beside a tiled expert in one call, equal to one expert at a time,
// near the reference; 33 and 47 rows leave a partly filled 16-token block.
TEST_P(QuantMoeTest, WideExpertsTakeTheTokenLanes) {
  torch::manual_seed(25);
  const std::vector<int64_t> counts = {kernels::detail::kLaneMinRows + 1, 3, 47};
  for (const auto f : {QuantFormat{QuantKind::kQ8, 32}, QuantFormat{QuantKind::kQ4, 32}, QuantFormat{QuantKind::kQ4Sym, 64}}) {
    const int64_t D = 192, F = 320;  // q4: a 64-input K tail (192 % 128); F: a 256-input K block and a 64 tail
    const auto ex = make_experts(int64_t(counts.size()), D, F, f);
    const auto x = torch::randn({counts[0] + counts[1] + counts[2], D});
    const auto y = kernels::quant_moe(x, counts, ex.view(0, counts.size()), torch::kFloat32, GetParam());
    int64_t r = 0;
    for (size_t i = 0; i < counts.size(); ++i) {
      const auto xi = x.narrow(0, r, counts[i]);
      const auto one = kernels::quant_moe(xi, {counts[i]}, ex.view(i, i + 1), torch::kFloat32, GetParam());
      EXPECT_TRUE(torch::equal(y.narrow(0, r, counts[i]), one)) << io::quant_format_name(f) << " expert " << i;
      const auto ref = reference(xi, ex.gate[i], ex.up[i], ex.down[i]);
      EXPECT_LT((y.narrow(0, r, counts[i]).to(torch::kFloat64) - ref).abs().max().item<double>(),
                0.02 * ref.abs().max().item<double>() + 1e-6)
          << io::quant_format_name(f) << " expert " << i;
      r += counts[i];
    }
  }
}

// The units of phases 2 and 3 are split over the threads by cost (one expert with most of the
// rows, many with one): every thread count gives the same bits, one expert at a time too.
TEST_P(QuantMoeTest, CostBalancedSplitGivesTheSameBitsOnAnyThreadCount) {
  torch::manual_seed(26);
  const std::vector<int64_t> counts = {40, 1, 0, 1, 2, 1, 9, 1, 1, 3, 1, 18, 1};
  int64_t P = 0;
  for (auto c : counts) P += c;
  const QuantFormat f{QuantKind::kQ4, 32};
  const auto ex = make_experts(int64_t(counts.size()), 128, 192, f);
  const auto x = torch::randn({P, 128}).to(torch::kBFloat16);
  const int before = at::get_num_threads();
  std::vector<torch::Tensor> ys;
  for (int t : {1, 2, 3, 5}) {
    at::set_num_threads(t);
    ys.push_back(kernels::quant_moe(x, counts, ex.view(0, counts.size()), torch::kBFloat16, GetParam()));
  }
  at::set_num_threads(before);
  for (size_t i = 1; i < ys.size(); ++i) EXPECT_TRUE(torch::equal(ys[0], ys[i])) << "thread count #" << i;
  int64_t r = 0;
  for (size_t i = 0; i < counts.size(); ++i) {
    if (counts[i] == 0) continue;
    const auto one = kernels::quant_moe(x.narrow(0, r, counts[i]), {counts[i]}, ex.view(i, i + 1), torch::kBFloat16, GetParam());
    EXPECT_TRUE(torch::equal(ys[0].narrow(0, r, counts[i]), one)) << "expert " << i;
    r += counts[i];
  }
}

TEST_P(QuantMoeTest, ManyRowsFallBackToOneExpertAtATime) {
  torch::manual_seed(24);
  const QuantFormat f{QuantKind::kQ8, 32};
  const auto ex = make_experts(2, 64, 64, f);
  const std::vector<int64_t> counts = {kernels::quant_max_rows() + 3, 2};
  const auto x = torch::randn({counts[0] + counts[1], 64});
  const auto y = kernels::quant_moe(x, counts, ex.view(0, 2), torch::kFloat32, GetParam());
  const auto ref = reference(x.narrow(0, 0, counts[0]), ex.gate[0], ex.up[0], ex.down[0]);
  EXPECT_LT((y.narrow(0, 0, counts[0]).to(torch::kFloat64) - ref).abs().max().item<double>(),
            0.02 * ref.abs().max().item<double>());
}

INSTANTIATE_TEST_SUITE_P(Paths, QuantMoeTest,
                         ::testing::Values(QuantKernel::kVnni, QuantKernel::kAvx2, QuantKernel::kTorch),
                         [](const auto& info) { return std::string(kernels::quant_kernel_name(info.param)); });

TEST(QuantMoe, MismatchedExpertsThrow) {
  const auto a = make_experts(1, 64, 64, {QuantKind::kQ8, 32}), b = make_experts(1, 64, 64, {QuantKind::kQ4, 32});
  const auto x = torch::randn({2, 64});
  kernels::QuantExperts mixed = a.view(0, 1);
  mixed.gate.push_back(&b.gate[0]);
  mixed.up.push_back(&b.up[0]);
  mixed.down.push_back(&b.down[0]);
  EXPECT_THROW(kernels::quant_moe(x, {1, 1}, mixed, torch::kFloat32), UserError);    // formats differ
  EXPECT_THROW(kernels::quant_moe(x, {1, 2}, a.view(0, 1), torch::kFloat32), UserError);  // lengths / rows
  EXPECT_THROW(kernels::quant_moe(x, {3}, a.view(0, 1), torch::kFloat32), UserError);
  kernels::QuantExperts swapped = a.view(0, 1);
  const auto wide = make_experts(1, 64, 96, {QuantKind::kQ8, 32});
  swapped.down[0] = &wide.down[0];  // [64, 96] where [64, 64] is due
  EXPECT_THROW(kernels::quant_moe(x, {2}, swapped, torch::kFloat32), UserError);
  EXPECT_EQ(kernels::quant_moe(torch::randn({0, 64}), {0}, a.view(0, 1), torch::kFloat32).sizes(),
            (std::vector<int64_t>{0, 64}));
}

}  // namespace
}  // namespace ecdlm
