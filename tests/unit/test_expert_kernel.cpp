// The small-M AVX512-BF16 expert kernel (moe/expert_kernel.h): exact-arithmetic references in f64
// over every tail case, the SwiGLU expert no less accurate than torch's bf16 path, and dispatch.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "ecdlm/moe/expert_kernel.h"
#include "ecdlm/moe/experts.h"
#include "ecdlm/util/error.h"

namespace ecdlm::moe {
namespace {

class ExpertKernelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!cpu_has_avx512_bf16()) GTEST_SKIP() << "this CPU has no AVX512-BF16";
    set_expert_kernel(ExpertKernel::kAuto);
  }
  void TearDown() override { set_expert_kernel(ExpertKernel::kAuto); }
};

torch::Tensor bf16_randn(std::vector<int64_t> shape, double std = 1.0) {
  return (torch::randn(shape) * std).to(torch::kBFloat16);
}

double max_err(const torch::Tensor& a, const torch::Tensor& ref) {
  return (a.to(torch::kFloat64) - ref).abs().max().item<double>();
}

TEST_F(ExpertKernelTest, LinearMatchesF64ReferenceOnEveryTail) {
  torch::manual_seed(3);
  // M across the 4-row chunks, N across the 4-row tiles and the 64-row blocks, K across the
  // 32-lane tail mask (K < 32, K not a multiple of 32, a real expert's 2048).
  for (int64_t M : {1, 2, 3, 4, 5, 7, 8, 9, 16})
    for (auto nk : std::vector<std::pair<int64_t, int64_t>>{{1, 1}, {7, 40}, {13, 100}, {67, 31}, {130, 2048}}) {
      const auto [N, K] = nk;
      auto x = bf16_randn({M, K}), w = bf16_randn({N, K});
      auto ref = torch::matmul(x.to(torch::kFloat64), w.to(torch::kFloat64).t());
      auto y = small_m_linear_bf16(x, w);
      ASSERT_EQ(y.scalar_type(), torch::kFloat32);
      ASSERT_EQ(y.sizes(), (std::vector<int64_t>{M, N}));
      // f32 accumulation of K products of bf16 values (exact in f32): error ~ K * 2^-24 * |terms|.
      const double tol = 1e-6 * static_cast<double>(K) + 1e-6;
      EXPECT_LT(max_err(y, ref), tol) << "M " << M << " N " << N << " K " << K;
    }
}

TEST_F(ExpertKernelTest, ExpertIsAtLeastAsAccurateAsTorchBf16) {
  torch::manual_seed(5);
  const int64_t D = 256, F = 96;
  auto gate = bf16_randn({F, D}, 0.05), up = bf16_randn({F, D}, 0.05), down = bf16_randn({D, F}, 0.05);
  auto f64 = [](const torch::Tensor& t) { return t.to(torch::kFloat64); };
  for (int64_t M : {1, 4, 6, 16}) {
    auto x = bf16_randn({M, D});
    auto g = torch::matmul(f64(x), f64(gate).t()), u = torch::matmul(f64(x), f64(up).t());
    auto ref = torch::matmul(torch::silu(g) * u, f64(down).t());
    namespace Fn = torch::nn::functional;
    auto torch_y = Fn::linear(torch::silu(Fn::linear(x, gate)) * Fn::linear(x, up), down);
    auto kernel_y = small_m_expert_bf16(x, gate, up, down);
    ASSERT_EQ(kernel_y.scalar_type(), torch::kBFloat16);
    const double scale = ref.abs().max().item<double>();
    // bf16 output rounding alone is up to 2^-9 relative.
    EXPECT_LT(max_err(kernel_y, ref), scale * 8e-3) << "M " << M;
    EXPECT_LE(max_err(kernel_y, ref), max_err(torch_y, ref) * 1.05 + scale * 1e-3) << "M " << M;
  }
}

TEST_F(ExpertKernelTest, ExpertsModuleUsesItOnlyWhereItApplies) {
  torch::manual_seed(9);
  const int64_t E = 4, D = 64, F = 32;
  Experts ex(E, D, F);
  ex->to(torch::kBFloat16);
  torch::NoGradGuard ng;
  auto x_small = bf16_randn({3, D});
  auto x_big = bf16_randn({kSmallMMaxRows + 1, D});
  EXPECT_TRUE(small_m_kernel_applies(x_small, ex->gate_w(1)));
  EXPECT_FALSE(small_m_kernel_applies(x_big, ex->gate_w(1)));
  EXPECT_FALSE(small_m_kernel_applies(x_small.to(torch::kFloat32), ex->gate_w(1).to(torch::kFloat32)));
  EXPECT_FALSE(small_m_kernel_applies(bf16_randn({3, 2 * D}).slice(1, 0, D), ex->gate_w(1)));  // strided
  auto via_kernel = ex->forward_one(1, x_small);
  EXPECT_TRUE(torch::equal(via_kernel, small_m_expert_bf16(x_small, ex->gate_w(1), ex->up_w(1), ex->down_w(1))));
  set_expert_kernel(ExpertKernel::kTorch);
  EXPECT_FALSE(small_m_kernel_applies(x_small, ex->gate_w(1)));
  auto via_torch = ex->forward_one(1, x_small);
  EXPECT_FALSE(torch::equal(via_kernel, via_torch));  // different rounding: the switch is real
  EXPECT_TRUE(torch::allclose(via_kernel.to(torch::kFloat32), via_torch.to(torch::kFloat32), 3e-2, 3e-3));
}

TEST(ExpertKernelFlag, ParsesAndRefusesUnknownNames) {
  EXPECT_EQ(parse_expert_kernel("auto", "--f"), ExpertKernel::kAuto);
  EXPECT_EQ(parse_expert_kernel("torch", "--f"), ExpertKernel::kTorch);
  EXPECT_THROW(parse_expert_kernel("avx", "--moe-expert-kernel"), UserError);
}

TEST(ExpertKernelGrad, AutogradInputsKeepTorchsPath) {
  auto x = torch::randn({2, 32}).to(torch::kBFloat16).requires_grad_(true);
  auto w = torch::randn({8, 32}).to(torch::kBFloat16);
  EXPECT_FALSE(small_m_kernel_applies(x, w));
}

}  // namespace
}  // namespace ecdlm::moe
