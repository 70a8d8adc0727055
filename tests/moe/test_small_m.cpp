// The small-M kernels (kernels/small_m.h), for every backend this CPU has (AMX-BF16,
// AVX512-BF16): f64 references over every tail case, SwiGLU no less accurate than torch's bf16
// path, the fused MoE equal to expert-by-expert, dispatch rules, and AMX next to oneDNN.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "ecdlm/kernels/head.h"
#include "ecdlm/kernels/small_m.h"
#include "ecdlm/moe/experts.h"
#include "ecdlm/nn/linear.h"
#include "ecdlm/util/error.h"

namespace ecdlm::kernels {
namespace {

std::vector<SmallM> available_backends() {
  std::vector<SmallM> b;
  if (cpu_has_amx_bf16()) b.push_back(SmallM::kAmx);
  if (cpu_has_avx512_bf16()) b.push_back(SmallM::kAvx512);
  return b;
}

class SmallMTest : public ::testing::TestWithParam<SmallM> {
 protected:
  void SetUp() override {
    const auto b = available_backends();
    if (std::find(b.begin(), b.end(), GetParam()) == b.end())
      GTEST_SKIP() << "this CPU has no " << small_m_name(GetParam());
    set_small_m(GetParam());
  }
  void TearDown() override { set_small_m(SmallM::kAuto); }
};

torch::Tensor bf16_randn(std::vector<int64_t> shape, double std = 1.0) {
  return (torch::randn(shape) * std).to(torch::kBFloat16);
}

torch::Tensor f64(const torch::Tensor& t) { return t.to(torch::kFloat64); }

double max_err(const torch::Tensor& a, const torch::Tensor& ref) { return (f64(a) - ref).abs().max().item<double>(); }

TEST_P(SmallMTest, LinearMatchesF64ReferenceOnEveryTail) {
  torch::manual_seed(3);
  const int64_t max_m = small_m_max_rows();
  // M across the 4-row chunks and 16-token tile groups; N across the 4-row tiles, 16-row tiles
  // and 64-row units; K across the 32-element tail (odd shapes take the AVX512 loop) and
  // AMX-shaped products (K % 32 == 0, N % 16 == 0), with rows folded by 2 (K 512, N 96; K 1024)
  // and by 4 (K 512, N 128; K 256, N 64) where R * M <= 32.
  for (int64_t M : {1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 48, 63, 64}) {
    if (M > max_m) continue;
    for (auto nk : std::vector<std::pair<int64_t, int64_t>>{{1, 1},     {7, 40},     {13, 100},  {67, 31},
                                                            {130, 2048}, {16, 32},    {48, 64},   {96, 512},
                                                            {128, 512},  {64, 256},   {96, 1024}, {272, 2048}}) {
      const auto [N, K] = nk;
      auto x = bf16_randn({M, K}), w = bf16_randn({N, K});
      if (!small_m_applies(x, w)) {
        EXPECT_TRUE(M > 16 && GetParam() == SmallM::kAmx && (K % 32 || N % 16)) << "M " << M << " N " << N << " K " << K;
        continue;
      }
      auto y = small_m_linear(x, w);
      ASSERT_EQ(y.scalar_type(), torch::kFloat32);
      ASSERT_EQ(y.sizes(), (std::vector<int64_t>{M, N}));
      // f32 accumulation of K products of bf16 values (exact in f32): error ~ K * 2^-24 * |terms|.
      const double tol = 1e-6 * static_cast<double>(K) + 1e-6;
      EXPECT_LT(max_err(y, torch::matmul(f64(x), f64(w).t())), tol) << "M " << M << " N " << N << " K " << K;
    }
  }
}

TEST_P(SmallMTest, SwiGluIsAtLeastAsAccurateAsTorchBf16) {
  torch::manual_seed(5);
  // (128, 512): the LLaDA2 expert's F with a folded down projection; (64, 48) and (100, 40) are
  // shapes AMX tiles do not take (F % 32, D % 32).
  for (auto df : std::vector<std::pair<int64_t, int64_t>>{{256, 96}, {128, 512}, {64, 48}, {100, 40}}) {
    const auto [D, F] = df;
    auto gate = bf16_randn({F, D}, 0.05), up = bf16_randn({F, D}, 0.05), down = bf16_randn({D, F}, 0.05);
    for (int64_t M : {1, 4, 6, 16, 32, 64}) {
      auto x = bf16_randn({M, D});
      if (!small_m_swiglu_applies(x, gate, up, down)) continue;
      auto g = torch::matmul(f64(x), f64(gate).t()), u = torch::matmul(f64(x), f64(up).t());
      auto ref = torch::matmul(torch::silu(g) * u, f64(down).t());
      namespace Fn = torch::nn::functional;
      auto torch_y = Fn::linear(torch::silu(Fn::linear(x, gate)) * Fn::linear(x, up), down);
      auto kernel_y = small_m_swiglu(x, gate, up, down);
      ASSERT_EQ(kernel_y.scalar_type(), torch::kBFloat16);
      const double scale = ref.abs().max().item<double>();
      // bf16 output rounding alone is up to 2^-9 relative.
      EXPECT_LT(max_err(kernel_y, ref), scale * 8e-3) << "D " << D << " M " << M;
      EXPECT_LE(max_err(kernel_y, ref), max_err(torch_y, ref) * 1.05 + scale * 1e-3) << "D " << D << " M " << M;
    }
  }
}

TEST_P(SmallMTest, FusedMoeEqualsExpertByExpert) {
  torch::manual_seed(11);
  const int64_t E = 6, D = 128, F = 64;
  moe::Experts ex(E, D, F);
  ex->to(torch::kBFloat16);
  torch::NoGradGuard ng;
  const std::vector<int64_t> counts = {3, 1, 0, 16, 5, 2};  // an expert without tokens is skipped
  int64_t P = 0;
  for (auto c : counts) P += c;
  auto x = bf16_randn({P, D});
  auto fused = ex->forward_sorted(x, counts);
  ASSERT_EQ(fused.sizes(), (std::vector<int64_t>{P, D}));
  int64_t off = 0;
  for (int64_t e = 0; e < E; ++e) {
    const int64_t c = counts[static_cast<size_t>(e)];
    if (c == 0) continue;
    auto one = small_m_swiglu(x.narrow(0, off, c), ex->gate_w(e), ex->up_w(e), ex->down_w(e));
    EXPECT_TRUE(torch::equal(fused.narrow(0, off, c), one)) << "expert " << e;
    off += c;
  }
  EXPECT_EQ(ex->num_touched(), 5);
}

// A many-row step: experts of 1-150 rows (every tail of the 4- and 6-row chunks and the 64-row
// passes, N and K tails of the 4-row tiles and the 64-row units), all in one grouped call. Each
// expert equals the same kernel on that expert alone, near f64; and every row equals that row
// computed alone, bit for bit (a served row's output does not depend on its batch).
TEST_P(SmallMTest, GroupedMoeTakesAnyRowCountAndRowsStayIndependent) {
  torch::manual_seed(17);
  torch::NoGradGuard ng;
  for (auto df : std::vector<std::pair<int64_t, int64_t>>{{128, 96}, {100, 72}}) {
    const auto [D, F] = df;
    const std::vector<int64_t> counts = {17, 1, 150, 64, 65, 6, 23, 130};
    std::vector<torch::Tensor> g, u, d;
    int64_t P = 0;
    for (auto c : counts) {
      g.push_back(bf16_randn({F, D}, 0.1));
      u.push_back(bf16_randn({F, D}, 0.1));
      d.push_back(bf16_randn({D, F}, 0.1));
      P += c;
    }
    auto x = bf16_randn({P, D});
    const bool takes = small_m_moe_applies(x, counts, g, u, d);
    if (GetParam() == SmallM::kAmx) {  // beyond 64 rows AMX leaves the product to torch
      EXPECT_FALSE(takes);
      continue;
    }
    ASSERT_TRUE(takes);
    auto y = small_m_moe(x, counts, g, u, d);
    int64_t row = 0;
    for (size_t i = 0; i < counts.size(); ++i) {
      const int64_t c = counts[i];
      auto xi = x.narrow(0, row, c), yi = y.narrow(0, row, c);
      EXPECT_TRUE(torch::equal(yi, small_m_moe(xi, {c}, {g[i]}, {u[i]}, {d[i]}))) << "D " << D << " expert " << i;
      auto ref = torch::matmul(torch::silu(torch::matmul(f64(xi), f64(g[i]).t())) * torch::matmul(f64(xi), f64(u[i]).t()),
                               f64(d[i]).t());
      const double scale = ref.abs().max().item<double>();
      EXPECT_LT(max_err(yi, ref), scale * 8e-3) << "D " << D << " expert " << i;
      for (int64_t m : {int64_t{0}, c / 2, c - 1})
        EXPECT_TRUE(torch::equal(yi.narrow(0, m, 1), small_m_moe(xi.narrow(0, m, 1), {1}, {g[i]}, {u[i]}, {d[i]})))
            << "D " << D << " expert " << i << " row " << m;
      row += c;
    }
  }
}

// The LM head over a batch's masked positions: any row count (tails of the 6-row chunks, the
// 64-row passes and the 64-row weight units), near f64, and every row the same bits as that row
// through the small-M kernel alone (what a one-row step computes).
TEST_P(SmallMTest, HeadTakesAnyRowCountAndRowsStayIndependent) {
  torch::manual_seed(19);
  torch::NoGradGuard ng;
  for (auto nk : std::vector<std::pair<int64_t, int64_t>>{{67, 31}, {130, 2048}, {1, 64}}) {
    const auto [N, K] = nk;
    auto w = bf16_randn({N, K});
    for (int64_t M : {1, 16, 17, 64, 65, 131}) {
      auto x = bf16_randn({M, K});
      if (GetParam() == SmallM::kAmx) {  // AMX keeps its own small-M tiles and oneDNN beyond
        EXPECT_FALSE(head_linear_applies(x, w));
        continue;
      }
      ASSERT_TRUE(head_linear_applies(x, w));
      auto y = head_linear(x, w);
      ASSERT_EQ(y.scalar_type(), torch::kFloat32);
      EXPECT_LT(max_err(y, torch::matmul(f64(x), f64(w).t())), 1e-6 * static_cast<double>(K) + 1e-6)
          << "M " << M << " N " << N << " K " << K;
      for (int64_t m : {int64_t{0}, M / 2, M - 1})
        EXPECT_TRUE(torch::equal(y.narrow(0, m, 1), small_m_linear(x.narrow(0, m, 1), w)))
            << "M " << M << " N " << N << " row " << m;
    }
  }
}

TEST_P(SmallMTest, ModulesTakeTheKernelOnlyWhereItApplies) {
  torch::manual_seed(9);
  const int64_t D = 64;
  LinearNoBias lin(D, 48);
  lin->to(torch::kBFloat16);
  torch::NoGradGuard ng;
  auto x_small = bf16_randn({2, 3, D});
  auto x_big = bf16_randn({small_m_max_rows() + 1, D});
  EXPECT_TRUE(small_m_applies(x_small.view({6, D}), lin->weight));
  EXPECT_FALSE(small_m_applies(x_big, lin->weight));
  EXPECT_FALSE(small_m_applies(x_small.view({6, D}).to(torch::kFloat32), lin->weight.to(torch::kFloat32)));
  EXPECT_FALSE(small_m_applies(bf16_randn({3, 2 * D}).slice(1, 0, D), lin->weight));  // strided
  auto via_kernel = lin(x_small);
  ASSERT_EQ(via_kernel.sizes(), (std::vector<int64_t>{2, 3, 48}));
  EXPECT_TRUE(torch::equal(via_kernel.view({6, 48}), small_m_linear(x_small.view({6, D}), lin->weight).to(torch::kBFloat16)));
  set_small_m(SmallM::kTorch);
  EXPECT_FALSE(small_m_applies(x_small.view({6, D}), lin->weight));
  auto via_torch = lin(x_small);
  EXPECT_TRUE(torch::allclose(via_kernel.to(torch::kFloat32), via_torch.to(torch::kFloat32), 2e-2, 2e-2));
}

TEST_P(SmallMTest, OneDnnIsUnaffectedByOurTileState) {
  // AMX tile configuration is per thread; oneDNN's AMX kernels configure their own. A bf16 matmul
  // large enough for oneDNN gives the same bits before and after a small-M call.
  torch::manual_seed(13);
  torch::NoGradGuard ng;
  auto a = bf16_randn({256, 512}), b = bf16_randn({384, 512});
  auto before = torch::nn::functional::linear(a, b);
  auto x = bf16_randn({8, 512});
  auto small = small_m_linear(x, b);
  auto after = torch::nn::functional::linear(a, b);
  EXPECT_TRUE(torch::equal(before, after));
  EXPECT_LT(max_err(small, torch::matmul(f64(x), f64(b).t())), 1e-6 * 512 + 1e-6);
}

INSTANTIATE_TEST_SUITE_P(Backends, SmallMTest, ::testing::Values(SmallM::kAmx, SmallM::kAvx512),
                         [](const auto& info) { return std::string(small_m_name(info.param)); });

TEST(SmallMFlag, ParsesAndRefusesUnknownOrMissingBackends) {
  EXPECT_EQ(parse_small_m("auto", "--kernel"), SmallM::kAuto);
  EXPECT_EQ(parse_small_m("torch", "--kernel"), SmallM::kTorch);
  EXPECT_THROW(parse_small_m("avx", "--kernel"), UserError);
  if (!cpu_has_amx_bf16()) EXPECT_THROW(parse_small_m("amx", "--kernel"), UserError);
  if (!cpu_has_avx512_bf16()) EXPECT_THROW(parse_small_m("avx512", "--kernel"), UserError);
  set_small_m(SmallM::kTorch);
  EXPECT_EQ(small_m_max_rows(), 0);
  EXPECT_FALSE(head_linear_applies(torch::randn({20, 32}).to(torch::kBFloat16), torch::randn({8, 32}).to(torch::kBFloat16)));
  set_small_m(SmallM::kAuto);
  EXPECT_EQ(small_m_backend(), cpu_has_amx_bf16() ? SmallM::kAmx : cpu_has_avx512_bf16() ? SmallM::kAvx512 : SmallM::kTorch);
}

TEST(SmallMGrad, AutogradInputsKeepTorchsPath) {
  auto x = torch::randn({2, 32}).to(torch::kBFloat16).requires_grad_(true);
  auto w = torch::randn({32, 32}).to(torch::kBFloat16);
  EXPECT_FALSE(small_m_applies(x, w));
}

}  // namespace
}  // namespace ecdlm::kernels

namespace ecdlm::kernels {
namespace {

// The router's f32 product: every tail of the 4 x 4 tiles, the 16-lane K loop and the 32-row
// blocks, against f64.
TEST(SmallMF32, RouterProductMatchesF64Reference) {
  if (!__builtin_cpu_supports("avx512f")) GTEST_SKIP() << "no AVX512F";
  torch::manual_seed(11);
  for (int64_t M : {1, 2, 3, 4, 5, 9, 32, 64})
    for (auto nk : std::vector<std::pair<int64_t, int64_t>>{{1, 1}, {3, 17}, {7, 100}, {33, 64}, {256, 2048}, {66, 31}}) {
      const auto [N, K] = nk;
      auto x = torch::randn({M, K}), w = torch::randn({N, K});
      ASSERT_TRUE(small_m_f32_applies(x, w));
      auto y = small_m_linear_f32(x, w);
      ASSERT_EQ(y.sizes(), (std::vector<int64_t>{M, N}));
      const double tol = 2e-6 * static_cast<double>(K);
      EXPECT_LT((y.to(torch::kFloat64) - torch::matmul(x.to(torch::kFloat64), w.to(torch::kFloat64).t())).abs().max().item<double>(),
                tol) << "M " << M << " N " << N << " K " << K;
    }
  // Out of its scope: more than 64 rows, autograd, bf16, the torch backend.
  EXPECT_FALSE(small_m_f32_applies(torch::randn({65, 8}), torch::randn({4, 8})));
  EXPECT_FALSE(small_m_f32_applies(torch::randn({2, 8}), torch::randn({4, 8}).requires_grad_(true)));
  EXPECT_FALSE(small_m_f32_applies(torch::randn({2, 8}).to(torch::kBFloat16), torch::randn({4, 8})));
  set_small_m(SmallM::kTorch);
  EXPECT_FALSE(small_m_f32_applies(torch::randn({2, 8}), torch::randn({4, 8})));
  set_small_m(SmallM::kAuto);
}

// The f32 inference product (kernels::linear's f32 path): near f64, and a row's result is the
// same bits whatever the other rows (what keeps a served row independent of its batch).
TEST(SmallMF32, LinearMatchesF64AndRowsAreIndependent) {
  if (!__builtin_cpu_supports("avx512f")) GTEST_SKIP() << "no AVX512F";
  torch::NoGradGuard ng;
  EXPECT_FALSE(f32_linear_applies(torch::randn({2, 8}), torch::randn({4, 8})));  // outside a decoder: BLAS
  F32TilesScope tiles;
  torch::manual_seed(12);
  for (int64_t M : {1, 5, 64, 65, 300, 512}) {
    auto x = torch::randn({M, 256}), w = torch::randn({300, 256});
    ASSERT_TRUE(f32_linear_applies(x, w));
    auto y = kernels::linear(x, w);
    EXPECT_LT((y.to(torch::kFloat64) - torch::matmul(x.to(torch::kFloat64), w.to(torch::kFloat64).t())).abs().max().item<double>(),
              2e-6 * 256) << "M " << M;
    for (int64_t m : {int64_t{0}, M / 2, M - 1})
      EXPECT_TRUE(torch::equal(kernels::linear(x.narrow(0, m, 1), w), y.narrow(0, m, 1))) << "M " << M << " row " << m;
  }
  EXPECT_FALSE(f32_linear_applies(torch::randn({513, 8}), torch::randn({4, 8})));
  EXPECT_FALSE(f32_linear_applies(torch::randn({2, 8}).to(torch::kBFloat16), torch::randn({4, 8})));
  {
    torch::GradMode::set_enabled(true);
    EXPECT_FALSE(f32_linear_applies(torch::randn({2, 8}), torch::randn({4, 8}).requires_grad_(true)));
    torch::GradMode::set_enabled(false);
  }
  set_small_m(SmallM::kTorch);
  EXPECT_FALSE(f32_linear_applies(torch::randn({2, 8}), torch::randn({4, 8})));
  set_small_m(SmallM::kAuto);
}

// The f32 grouped MoE equals swiglu() expert by expert, bit for bit (one rounding path).
TEST(SmallMF32, MoeEqualsExpertByExpert) {
  if (!__builtin_cpu_supports("avx512f")) GTEST_SKIP() << "no AVX512F";
  torch::NoGradGuard ng;
  F32TilesScope tiles;
  torch::manual_seed(13);
  const int64_t D = 64, F = 96;
  std::vector<int64_t> counts{1, 7, 70, 3};
  std::vector<torch::Tensor> g, u, d;
  for (size_t i = 0; i < counts.size(); ++i) {
    g.push_back(torch::randn({F, D}) * 0.1);
    u.push_back(torch::randn({F, D}) * 0.1);
    d.push_back(torch::randn({D, F}) * 0.1);
  }
  auto x = torch::randn({81, D});
  ASSERT_TRUE(f32_moe_applies(x, counts, g, u, d));
  auto y = f32_moe(x, counts, g, u, d);
  int64_t row = 0;
  for (size_t i = 0; i < counts.size(); ++i) {
    auto xi = x.narrow(0, row, counts[i]);
    EXPECT_TRUE(torch::equal(y.narrow(0, row, counts[i]), swiglu(xi, g[i], u[i], d[i]))) << "expert " << i;
    auto ref = torch::matmul(torch::silu(torch::matmul(xi.to(torch::kFloat64), g[i].to(torch::kFloat64).t())) *
                                 torch::matmul(xi.to(torch::kFloat64), u[i].to(torch::kFloat64).t()),
                             d[i].to(torch::kFloat64).t());
    EXPECT_LT((y.narrow(0, row, counts[i]).to(torch::kFloat64) - ref).abs().max().item<double>(), 1e-5) << "expert " << i;
    row += counts[i];
  }
  EXPECT_FALSE(f32_moe_applies(x, {1, 7, 70, 2}, g, u, d));  // counts must cover the rows
  EXPECT_FALSE(f32_moe_applies(x.to(torch::kBFloat16), counts, g, u, d));
}

}  // namespace
}  // namespace ecdlm::kernels
