// The AMX-INT8 kernel over the repacked copies (kernels/quant_amx.cpp) gives the VNNI few-row
// kernel's bits on every format, group, N tail, row range and token count (1-100: partial 16-token
// chunks, odd chunk counts), falls back where it does not apply (q4's K % 128 tail), and the
// drivers (quant_linear, quant_moe with --quant-kernel amx) give the bits of vnni. Each test runs
// on emulated tiles (scalar, following the instructions' definitions: every AVX512-VNNI CPU) and on
// the hardware's tiles where the CPU has AMX-INT8 (skipped elsewhere).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>
#include <vector>

#include "ecdlm/io/quant_format.h"
#include "ecdlm/kernels/quant.h"
#include "ecdlm/kernels/quant_backend.h"
#include "ecdlm/kernels/quant_repack.h"
#include "ecdlm/util/error.h"
#include "quant_test_util.h"

namespace ecdlm {
namespace {

using kernels::QuantKernel;
namespace kd = kernels::detail;
using test::awkward_weight;

class QuantAmxInt8 : public ::testing::TestWithParam<bool> {  // param: emulated tiles
 protected:
  void SetUp() override {
    if (!kernels::cpu_has_avx512_vnni()) GTEST_SKIP() << "no AVX512-VNNI";
    if (!GetParam() && !kernels::cpu_has_amx_int8()) GTEST_SKIP() << "no AMX-INT8 on this CPU";
    kd::set_amx_int8_emulated(GetParam());
  }
  void TearDown() override {
    kd::set_amx_int8_emulated(false);
    kd::set_packed_amx_min_rows(kd::kPackedAmxMinRows);
    kernels::set_quant_repack(false);
  }
};

TEST_P(QuantAmxInt8, SameBitsAsTheVnniKernel) {
  torch::manual_seed(51);
  kd::QxScratch xbuf;
  for (const auto& f : test::kQuantFormats)
    for (int64_t K : {256, 320, 1024}) {  // q4 at 320: a K % 128 tail, not the tiles' (applies false)
      if (K % f.group) continue;
      for (int64_t N : {32, 40, 67}) {
        const auto w = io::quantize(awkward_weight(N, K), f);
        const auto pk = kd::packed(w);
        auto vnni = kd::weight_operand(w);
        vnni.packed = pk.get();
        auto amx = vnni;
        amx.amx = kd::amx_packed_applies(*pk, vnni);
        EXPECT_EQ(amx.amx, f.kind == io::QuantKind::kQ8 || K % 128 == 0) << io::quant_format_name(f) << " K " << K;
        const int32_t z = kd::vnni_zero_point(f.kind);
        kd::set_packed_amx_min_rows(1);
        for (int64_t M : {1, 9, 16, 17, 32, 33, 47, 100}) {
          if (K == 1024 && M != 17 && M != 47) continue;  // keep the sweep short
          auto x = torch::randn({M, K});
          x.index_put_({M - 1, 0}, 40.0F);
          const auto st = xbuf.store(M, K, f.group);
          for (int64_t m = 0; m < M; ++m) kd::quantize_row(x[m].data_ptr<float>(), K, st, m, 0, z);
          for (auto [n0, n1] : {std::pair<int64_t, int64_t>{0, N}, {16, N}, {0, 16}}) {
            auto a = torch::full({M, n1 - n0}, -1.0F), b = torch::full({M, n1 - n0}, -2.0F);
            kd::vnni_packed_rows(st.view(), *pk, vnni, n0, n1, a.data_ptr<float>(), n1 - n0);
            kd::vnni_packed_rows(st.view(), *pk, amx, n0, n1, b.data_ptr<float>(), n1 - n0);
            EXPECT_TRUE(torch::equal(a, b)) << io::quant_format_name(f) << " K " << K << " N " << N << " M " << M
                                            << " rows " << n0 << ".." << n1 << " max |d| "
                                            << (a - b).abs().max().item<float>();
          }
        }
      }
    }
}

// The drivers with --quant-kernel amx: quant_linear at 1-300 rows (the tiles from
// kPackedAmxMinRows, also past 64 rows where vnni takes the token lanes) and the fused experts,
// against vnni on the same copies.
TEST_P(QuantAmxInt8, DriversGiveTheVnniBits) {
  torch::manual_seed(52);
  test::RepackOn on;
  for (const auto& f : test::kQuantFormats) {
    const auto w = io::quantize(awkward_weight(67, 256), f);
    const auto x = torch::randn({300, 256});
    for (int64_t M : {1, 8, 9, 40, 64, 65, 300}) {
      const auto xm = x.narrow(0, 0, M);
      EXPECT_TRUE(torch::equal(kernels::quant_linear(xm, w, QuantKernel::kVnni),
                               kernels::quant_linear(xm, w, QuantKernel::kAmx)))
          << io::quant_format_name(f) << " M " << M;
    }
    const test::RandomQuantExperts ex(4, 192, 256, f);  // F 192: q4's down has a K % 128 tail
    const std::vector<int64_t> counts = {1, 12, 0, 70};
    const auto xe = torch::randn({83, 256}).to(torch::kBFloat16);
    for (auto out : {torch::kFloat32, torch::kBFloat16})
      EXPECT_TRUE(torch::equal(kernels::quant_moe(xe, counts, ex.view(), out, QuantKernel::kVnni),
                               kernels::quant_moe(xe, counts, ex.view(), out, QuantKernel::kAmx)))
          << io::quant_format_name(f) << " out " << out;
  }
}

// The start-up self-check (cpu_has_amx_int8 runs it on the hardware) passes on these tiles.
TEST_P(QuantAmxInt8, SelfCheckAgrees) { EXPECT_TRUE(kd::amx_int8_self_check(GetParam())); }

INSTANTIATE_TEST_SUITE_P(Tiles, QuantAmxInt8, ::testing::Values(true, false),
                         [](const auto& info) { return std::string(info.param ? "emulated" : "hardware"); });

// --quant-kernel amx where the CPU has no AMX-INT8 (and no emulation): refused with the fix named.
TEST(QuantAmxInt8Flag, RefusedWithoutAmx) {
  if (kernels::cpu_has_amx_int8()) GTEST_SKIP() << "this CPU has AMX-INT8";
  try {
    (void)kernels::parse_quant_kernel("amx", "--quant-kernel");
    FAIL() << "accepted --quant-kernel amx without AMX-INT8";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("AMX-INT8"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("vnni"), std::string::npos) << e.what();
  }
  if (!kernels::cpu_has_avx512_vnni()) return;
  const test::RandomQuantExperts ex(1, 64, 64, {io::QuantKind::kQ8, 32});
  test::RepackOn on;
  EXPECT_THROW(kernels::quant_moe(torch::randn({12, 64}), {12}, ex.view(), torch::kFloat32, QuantKernel::kAmx), UserError);
}

}  // namespace
}  // namespace ecdlm
