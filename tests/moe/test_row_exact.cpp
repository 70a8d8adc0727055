// kernels/row_exact.h: inside the decoders' scope (F32TilesScope) a token row's bf16 projection,
// bf16 SwiGLU and f32 router logits are the same bits whether the row is computed alone or among
// 16, 17 or 150 rows (a served row alone vs in a batch); without the scope, torch's path as before.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "ecdlm/kernels/row_exact.h"
#include "ecdlm/kernels/small_m.h"
#include "ecdlm/moe/router.h"

namespace ecdlm::kernels {
namespace {

struct Avx512Backend {
  Avx512Backend() { set_small_m(SmallM::kAvx512); }
  ~Avx512Backend() { set_small_m(SmallM::kAuto); }
};

// Every row of f(x) equals f(that row alone), bit for bit, for row counts across the 16-row limit.
template <class F>
void expect_rows_alone_equal(const torch::Tensor& x, F f) {
  for (int64_t M : {16, 17, 150}) {
    const auto all = f(x.narrow(0, 0, M));
    for (int64_t i : {int64_t{0}, M / 2, M - 1})
      EXPECT_TRUE(torch::equal(all[i], f(x.narrow(0, i, 1))[0])) << "row " << i << " of " << M;
  }
}

TEST(RowExact, Bf16LinearAndSwigluRowsAloneEqualRowsInMany) {
  if (!cpu_has_avx512_bf16()) GTEST_SKIP() << "no AVX512-BF16 on this CPU";
  Avx512Backend be;
  torch::NoGradGuard ng;
  torch::manual_seed(3);
  const auto x = torch::randn({150, 96}).to(torch::kBFloat16);
  const auto w = (torch::randn({80, 96}) * 0.1).to(torch::kBFloat16);
  const auto gate = (torch::randn({40, 96}) * 0.1).to(torch::kBFloat16);
  const auto up = (torch::randn({40, 96}) * 0.1).to(torch::kBFloat16);
  const auto down = (torch::randn({96, 40}) * 0.1).to(torch::kBFloat16);
  F32TilesScope scope;
  expect_rows_alone_equal(x, [&](const torch::Tensor& t) { return kernels::linear(t, w); });
  expect_rows_alone_equal(x, [&](const torch::Tensor& t) { return kernels::swiglu(t, gate, up, down); });
  // Near torch's result (another summation order and, for the SwiGLU, fewer bf16 roundings).
  EXPECT_TRUE(torch::allclose(kernels::linear(x, w).to(torch::kFloat32), torch::nn::functional::linear(x, w).to(torch::kFloat32),
                              2e-2, 2e-2));
}

TEST(RowExact, RouterLogitsRowsAloneEqualRowsInMany) {
  if (!__builtin_cpu_supports("avx512f")) GTEST_SKIP() << "no AVX512F on this CPU";
  Avx512Backend be;
  torch::NoGradGuard ng;
  torch::manual_seed(4);
  const auto x = torch::randn({700, 64});  // beyond the 64- and 512-row limits of the other f32 paths
  const auto w = torch::randn({32, 64});
  {
    F32TilesScope scope;
    EXPECT_TRUE(f32_rows_applies(x, w));
    for (int64_t M : {64, 65, 700}) {
      const auto all = moe::router_logits(x.narrow(0, 0, M), w);
      for (int64_t i : {int64_t{0}, M - 1})
        EXPECT_TRUE(torch::equal(all[i], moe::router_logits(x.narrow(0, i, 1), w)[0])) << "row " << i << " of " << M;
    }
  }
  EXPECT_FALSE(f32_rows_applies(x, w)) << "outside the decoders' scope: BLAS, as training computes it";
}

}  // namespace
}  // namespace ecdlm::kernels
