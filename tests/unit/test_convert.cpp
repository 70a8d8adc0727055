// kernels/convert.h: bf16 -> f32 rows and o += f32(y) * g, vector and scalar paths, every tail
// length, bit for bit against torch (the combine of the MoE relies on index_add's bits).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "ecdlm/kernels/convert.h"

namespace {

using ecdlm::kernels::add_scaled;
using ecdlm::kernels::bf16_to_f32;

const uint16_t* bits(const torch::Tensor& t) { return reinterpret_cast<const uint16_t*>(t.data_ptr<at::BFloat16>()); }

class Convert : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override { ecdlm::kernels::detail::set_convert_vector(GetParam()); }
  void TearDown() override { ecdlm::kernels::detail::set_convert_vector(true); }
};

TEST_P(Convert, Bf16ToF32IsExact) {
  torch::manual_seed(3);
  for (int64_t n : {1, 7, 15, 16, 17, 33, 100}) {
    const auto x = (torch::randn({n}) * 100).to(torch::kBFloat16);
    auto y = torch::full({n + 1}, -7.0F);  // one past the end stays untouched
    bf16_to_f32(bits(x), n, y.data_ptr<float>());
    EXPECT_TRUE(torch::equal(y.slice(0, 0, n), x.to(torch::kFloat32))) << "n " << n;
    EXPECT_EQ(y[n].item<float>(), -7.0F) << "n " << n;
  }
}

TEST_P(Convert, AddScaledRoundsTheProductThenTheSumAsTorch) {
  torch::manual_seed(4);
  for (int64_t n : {1, 5, 16, 17, 31, 64, 129}) {
    const float g = 0.337F;
    const auto y16 = torch::randn({n}).to(torch::kBFloat16);
    const auto y32 = torch::randn({n});
    const auto o0 = torch::randn({n});
    auto o = o0.clone();
    add_scaled(bits(y16), g, n, o.data_ptr<float>());
    EXPECT_TRUE(torch::equal(o, o0 + y16.to(torch::kFloat32) * g)) << "bf16, n " << n;
    o = o0.clone();
    add_scaled(y32.data_ptr<float>(), g, n, o.data_ptr<float>());
    EXPECT_TRUE(torch::equal(o, o0 + y32 * g)) << "f32, n " << n;
  }
}

INSTANTIATE_TEST_SUITE_P(Paths, Convert, ::testing::Values(true, false),
                         [](const auto& info) { return info.param ? std::string("vector") : std::string("scalar"); });

}  // namespace
