// The one-pass inference RMSNorm and RoPE (kernels/norm_rope.h) against torch's expressions:
// RoPE bit for bit in f32 and bf16, RMSNorm (bf16) within one rounding step, f32 RMSNorm and
// autograd inputs left to torch.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "ecdlm/kernels/norm_rope.h"
#include "ecdlm/model/layers.h"

namespace ecdlm::kernels {
namespace {

torch::Tensor torch_rms_norm(const torch::Tensor& x, const torch::Tensor& w, double eps) {
  auto x32 = x.to(torch::kFloat32);
  return w * (x32 * torch::rsqrt(x32.pow(2).mean(-1, true) + eps)).to(x.scalar_type());
}

torch::Tensor torch_rope(const torch::Tensor& x, const RopeTable& t) {
  namespace idx = torch::indexing;
  const auto rd = t.rotary_dim, half = rd / 2;
  auto x1 = x.index({"...", idx::Slice(0, half)}), x2 = x.index({"...", idx::Slice(half, rd)});
  auto rot = torch::cat({x1 * t.cos - x2 * t.sin, x2 * t.cos + x1 * t.sin}, -1);
  return rd == x.size(-1) ? rot : torch::cat({rot, x.index({"...", idx::Slice(rd, idx::None)})}, -1);
}

TEST(NormRope, RopeReplaysTorchsRoundingExactly) {
  torch::manual_seed(1);
  for (auto dtype : {torch::kFloat32, torch::kBFloat16})
    for (int64_t rd : {64, 128}) {
      auto x = torch::randn({2, 5, 3, 128}).to(dtype);
      auto table = rope_table(torch::arange(40, 45, torch::kInt64), rd, 600000.0, dtype);
      auto got = rope(x, table.cos, table.sin, rd);
      ASSERT_TRUE(got.defined());
      EXPECT_TRUE(torch::equal(got, torch_rope(x, table))) << "dtype " << dtype << " rd " << rd;
      // A non-contiguous input (q after the qkv split) gives the same values.
      auto wide = torch::randn({2, 5, 6, 128}).to(dtype);
      auto part = wide.narrow(2, 1, 3);
      EXPECT_TRUE(torch::equal(rope(part, table.cos, table.sin, rd), torch_rope(part, table)));
    }
}

TEST(NormRope, RmsNormMatchesTorchWithinOneRounding) {
  torch::manual_seed(2);
  auto x = (torch::randn({7, 3, 256}) * 3).to(torch::kBFloat16);
  auto w = (torch::rand({256}) + 0.5).to(torch::kBFloat16);
  auto got = rms_norm(x, w, 1e-6);
  ASSERT_TRUE(got.defined());
  auto want = torch_rms_norm(x, w, 1e-6);
  auto rel = (got.to(torch::kFloat64) - want.to(torch::kFloat64)).abs() / (want.to(torch::kFloat64).abs() + 1e-30);
  EXPECT_LE(rel.max().item<double>(), 1.0 / 128);  // one bf16 step
  // The f32 differences (the order of the sum of squares) almost never cross a rounding.
  EXPECT_GE((got == want).to(torch::kFloat64).mean().item<double>(), 0.99);
  EXPECT_FALSE(rms_norm(x.to(torch::kFloat32), w.to(torch::kFloat32), 1e-6).defined());
}

TEST(NormRope, TrainingAndOtherDtypesKeepTorchsPath) {
  auto w = torch::ones({8}).requires_grad_(true);
  EXPECT_FALSE(rms_norm(torch::randn({2, 8}), w, 1e-6).defined());
  EXPECT_FALSE(rms_norm(torch::randn({2, 8}, torch::kFloat64), torch::ones({8}, torch::kFloat64), 1e-6).defined());
  auto t = rope_table(torch::arange(4, torch::kInt64), 8, 10000.0, torch::kFloat64);
  EXPECT_FALSE(rope(torch::randn({1, 4, 2, 8}, torch::kFloat64), t.cos, t.sin, 8).defined());
  // Through the module: a gradient still flows (torch's expression under autograd).
  RMSNorm norm(8, 1e-6);
  auto x = torch::randn({2, 8}, torch::requires_grad());
  norm(x).sum().backward();
  EXPECT_TRUE(x.grad().defined());
}

}  // namespace
}  // namespace ecdlm::kernels
