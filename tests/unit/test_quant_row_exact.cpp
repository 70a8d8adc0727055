// A served row's quantized products must not depend on its batch (continuous batching, issue 17):
// inside the decoders' scope (kernels::F32TilesScope) a token row computed alone equals the same
// row inside 3-300 rows, bit for bit, on every int8 path the CPU has (the vnni kernels on the
// output-lane copies and on the row layout, the AMX-INT8 tiles on the copies (emulated where the
// CPU has no AMX), the AVX2 fallback) and on the dequantized bf16 tiles
// (--quant-kernel bf16), in every format, with and without a q4 K % 128 tail, for quant_linear and
// the fused SwiGLU experts. (--quant-kernel torch is not: torch's GEMM blocks by the row count.)
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>
#include <vector>

#include "ecdlm/io/quant_format.h"
#include "ecdlm/kernels/quant.h"
#include "ecdlm/kernels/quant_backend.h"
#include "ecdlm/kernels/quant_repack.h"
#include "ecdlm/kernels/small_m.h"
#include "quant_test_util.h"

namespace ecdlm {
namespace {

using kernels::QuantKernel;

struct Path {
  const char* name;
  QuantKernel kernel;
  bool repack;
};

class QuantRowExact : public ::testing::TestWithParam<Path> {
 protected:
  void SetUp() override {
    const auto& p = GetParam();
    if (p.kernel == QuantKernel::kVnni && !kernels::cpu_has_avx512_vnni()) GTEST_SKIP() << "no AVX512-VNNI";
    if (p.kernel == QuantKernel::kAvx2 && !kernels::cpu_has_avx2()) GTEST_SKIP() << "no AVX2";
    if (p.kernel == QuantKernel::kBf16 && !kernels::cpu_has_avx512_bf16()) GTEST_SKIP() << "no AVX512-BF16";
    if (p.kernel == QuantKernel::kAmx) {
      if (!kernels::cpu_has_avx512_vnni()) GTEST_SKIP() << "no AVX512-VNNI";
      kernels::detail::set_amx_int8_emulated(!kernels::cpu_has_amx_int8());
    }
    prev_ = kernels::quant_kernel_choice();
    kernels::set_quant_kernel(p.kernel);
    kernels::set_quant_repack(p.repack);
  }
  void TearDown() override {
    kernels::set_quant_kernel(prev_);
    kernels::set_quant_repack(false);
    kernels::detail::set_amx_int8_emulated(false);
  }
  QuantKernel prev_ = QuantKernel::kAuto;
};

TEST_P(QuantRowExact, LinearRowAloneEqualsTheRowInABatch) {
  torch::manual_seed(45);
  kernels::F32TilesScope scope;
  for (const auto& f : test::kQuantFormats)
    for (int64_t K : {256, 320}) {  // q4: 320 % 128 = 64, a tail of unpaired groups
      if (K % f.group) continue;
      const auto w = io::quantize(torch::randn({67, K}) * 0.05, f);
      const auto x = torch::randn({300, K});
      for (int64_t M : {3, 16, 40, 65, 129, 300}) {
        const auto batch = kernels::quant_linear(x.narrow(0, 0, M), w);
        for (int64_t m : {int64_t{0}, M / 2, M - 1})
          EXPECT_TRUE(torch::equal(batch[m], kernels::quant_linear(x.narrow(0, m, 1), w)[0]))
              << GetParam().name << " " << io::quant_format_name(f) << " K " << K << " M " << M << " row " << m;
      }
    }
}

TEST_P(QuantRowExact, FusedExpertsRowAloneEqualsTheRowInABatch) {
  torch::manual_seed(46);
  kernels::F32TilesScope scope;
  for (const auto& f : test::kQuantFormats)
    for (int64_t D : {256, 320}) {
      if (D % f.group) continue;
      const test::RandomQuantExperts ex(2, 192, D, f);  // F = 192: down's K has a q4 tail too
      const auto xs = torch::randn({151, D}).to(torch::kBFloat16);
      for (auto out : {torch::kFloat32, torch::kBFloat16})  // f32: no rounding hides a difference
        for (int64_t M : {3, 20, 70, 150}) {
          const auto batch = kernels::quant_moe(xs.narrow(0, 0, M + 1), {1, M}, ex.view(), out);
          for (int64_t m : {int64_t{1}, M / 2 + 1, M}) {
            const auto alone = kernels::quant_moe(torch::cat({xs.narrow(0, 0, 1), xs.narrow(0, m, 1)}), {1, 1}, ex.view(), out);
            EXPECT_TRUE(torch::equal(batch[m], alone[1])) << GetParam().name << " " << io::quant_format_name(f) << " D "
                                                          << D << " M " << M << " row " << m << " out " << out;
          }
        }
    }
}

INSTANTIATE_TEST_SUITE_P(Paths, QuantRowExact,
                         ::testing::Values(Path{"vnni_copies", QuantKernel::kVnni, true},
                                           Path{"amx_copies", QuantKernel::kAmx, true},
                                           Path{"vnni_rows", QuantKernel::kVnni, false},
                                           Path{"avx2", QuantKernel::kAvx2, false},
                                           Path{"bf16", QuantKernel::kBf16, false}),
                         [](const auto& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace ecdlm
