// Quantized weights: the formats (io/quant_format.h: byte layouts, round-trip error, the error
// table that chose the defaults, bad shapes) and the kernels (kernels/quant.h: every path this CPU
// has against f64 references on every tail shape; tight against x quantized the same way, within
// the activation-rounding bound against the exact product).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <map>
#include <random>
#include <utility>

#include "ecdlm/io/quant_format.h"
#include "ecdlm/io/quant_search.h"
#include "ecdlm/kernels/quant.h"
#include "quant_test_util.h"
#include "ecdlm/kernels/small_m.h"
#include "ecdlm/util/error.h"

namespace ecdlm {
namespace {

using io::QuantFormat;
using io::QuantKind;
using kernels::QuantKernel;
using test::awkward_weight;

const std::vector<QuantFormat>& kFormats = test::kQuantFormats;

// Student-t with 3 degrees of freedom: heavy tails, like the outlier columns of trained weights.
torch::Tensor student_t3(std::vector<int64_t> shape) {
  auto chi2 = torch::zeros(shape);
  for (int i = 0; i < 3; ++i) chi2 += torch::randn(shape).square();
  return torch::randn(shape) / (chi2 / 3).sqrt();
}

float half_at(const torch::Tensor& t, int64_t i, int64_t j) { return t.index({i, j}).item<float>(); }

// The quantizer's rounding (io::detail::round_even) is std::nearbyint's below 2^22 and, clamped to
// the codes' ranges, everywhere: halves (ties to even), values next to the magic constant's
// edges, huge and tiny ones of both signs, random ones.
TEST(QuantFormat, RoundEvenAsNearbyint) {
  std::vector<float> xs;
  for (int k = -300; k <= 300; ++k)
    for (float f : {-0.5F, -0.25F, 0.0F, 0.25F, 0.5F, 0.75F}) xs.push_back(static_cast<float>(k) + f);
  for (float e : {4194304.0F, 8388608.0F, 12582912.0F, 16777216.0F, 1e30F, 3.4e38F})
    for (float s : {-1.0F, 1.0F})
      for (float dx : {-1.5F, -1.0F, -0.5F, 0.0F, 0.5F, 1.0F, 1.5F}) xs.push_back(s * e + dx);
  for (float t : {0.0F, -0.0F, 1e-30F, -1e-30F, 1.4e-45F, 0.49999997F, -0.49999997F, 2.5F, -2.5F, 3.5F}) xs.push_back(t);
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> wide(-1e6F, 1e6F), narrow(-140.0F, 140.0F);
  for (int i = 0; i < 20000; ++i) xs.push_back(i % 2 ? wide(rng) : narrow(rng));
  for (float x : xs) {
    const float want = std::nearbyint(x), got = io::detail::round_even(x);
    if (std::fabs(x) < 4194304.0F) EXPECT_EQ(got, want) << x;
    for (auto [lo, hi] : {std::pair{-127.0F, 127.0F}, {0.0F, 15.0F}, {-8.0F, 7.0F}})
      EXPECT_EQ(std::clamp(got, lo, hi), std::clamp(want, lo, hi)) << x << " in [" << lo << ", " << hi << "]";
  }
}

// The code search's vectorized step gives the scalar one's codes and squared error bit for bit,
// for every kind and group, on groups with zeros, outliers, a constant value and ties, under the
// scales the search tries (first guesses and refits: random d, m; d = 0).
TEST(QuantFormat, VectorSearchGivesTheScalarCodesAndErrors) {
  if (!__builtin_cpu_supports("avx512f")) GTEST_SKIP() << "no AVX-512";
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.0F, 0.05F);
  std::uniform_real_distribution<float> unit(0.0F, 1.0F);
  for (auto kind : {QuantKind::kQ8, QuantKind::kQ4, QuantKind::kQ4Sym})
    for (int64_t G : {32, 64})
      for (int trial = 0; trial < 400; ++trial) {
        std::vector<float> v(static_cast<size_t>(G));
        for (auto& x : v) x = normal(rng);
        if (trial % 5 == 1) v[static_cast<size_t>(trial) % v.size()] = 3.0F;  // an outlier
        if (trial % 5 == 2) std::fill(v.begin(), v.begin() + G / 2, 0.0F);
        if (trial % 5 == 3) std::fill(v.begin(), v.end(), -0.02F);
        const float amax = *std::max_element(v.begin(), v.end(), [](float a, float b) { return std::fabs(a) < std::fabs(b); });
        float d = static_cast<float>(c10::Half(std::fabs(amax) / (kind == QuantKind::kQ8 ? 127.0F : 7.5F) *
                                               (0.7F + 0.6F * unit(rng))));
        if (trial % 5 == 4) {  // codes exactly between two levels: ties to even
          d = 0.01F;
          for (size_t i = 0; i < v.size(); ++i) v[i] = (static_cast<float>(i % 9) - 4.0F + 0.5F) * d;
        }
        if (trial % 50 == 0) d = 0.0F;
        const float m = kind == QuantKind::kQ4 ? *std::min_element(v.begin(), v.end()) * (0.8F + 0.4F * unit(rng)) : 0.0F;
        std::vector<int> qs(v.size()), qv(v.size());
        const double es = io::detail::requantize_scalar(kind, v.data(), G, d, m, qs.data());
        const double ev = io::detail::requantize_avx512(kind, v.data(), G, d, m, qv.data());
        EXPECT_EQ(es, ev) << io::quant_format_name({kind, G}) << " trial " << trial;
        EXPECT_EQ(qs, qv) << io::quant_format_name({kind, G}) << " trial " << trial;
      }
}

TEST(QuantFormat, NamesRoundTripAndUnknownNamesThrow) {
  for (const auto& f : kFormats) EXPECT_EQ(io::parse_quant_format(io::quant_format_name(f), "--quant"), f);
  EXPECT_EQ(io::quant_format_name({QuantKind::kQ4Sym, 64}), "q4s_g64");
  EXPECT_THROW(io::parse_quant_format("q3_g32", "--quant"), UserError);
  EXPECT_THROW(io::parse_quant_format("q8_g16", "--quant"), UserError);
}

TEST(QuantFormat, ByteLayout) {
  // q8: codes row-major; the group's max |w| maps to ±127, scale f16 max|w| / 127.
  auto w = torch::zeros({2, 64});
  for (int64_t k = 0; k < 64; ++k) w.index_put_({0, k}, static_cast<float>(k - 32) / 32.0F);
  w.index_put_({1, 40}, -2.0F);
  auto q8 = io::quantize(w, {QuantKind::kQ8, 32});
  ASSERT_EQ(q8.qweight.scalar_type(), torch::kInt8);
  ASSERT_EQ(q8.qweight.sizes(), (std::vector<int64_t>{2, 64}));
  ASSERT_EQ(q8.scales.scalar_type(), torch::kFloat16);
  ASSERT_EQ(q8.scales.sizes(), (std::vector<int64_t>{2, 2}));
  EXPECT_FALSE(q8.mins.defined());
  EXPECT_EQ(q8.qweight.index({0, 0}).item<int>(), -127);  // -1.0, the max |w| of group 0
  EXPECT_EQ(q8.qweight.index({1, 40}).item<int>(), -127);
  EXPECT_EQ(q8.qweight.index({1, 0}).item<int>(), 0);
  EXPECT_FLOAT_EQ(half_at(q8.scales, 0, 0), static_cast<float>(c10::Half(1.0F / 127.0F)));
  EXPECT_EQ(half_at(q8.scales, 1, 0), 0.0F);  // an all-zero group
  EXPECT_EQ(q8.bytes(), 2 * 64 + 2 * 2 * 2);
  // q4: in a chunk of L inputs byte i holds input i (low nibble) and L/2 + i (high). K = 160: one
  // 128-chunk (bytes 0-63) and a 32-input tail (bytes 64-79: inputs 128 + i and 144 + i).
  auto ramp = torch::arange(160, torch::kFloat32).remainder(16).view({1, 160});  // codes = values
  auto q4 = io::quantize(ramp, {QuantKind::kQ4, 32});
  ASSERT_EQ(q4.qweight.scalar_type(), torch::kUInt8);
  ASSERT_EQ(q4.qweight.sizes(), (std::vector<int64_t>{1, 80}));
  ASSERT_EQ(q4.mins.sizes(), (std::vector<int64_t>{1, 5}));
  const auto* b = q4.qweight.data_ptr<uint8_t>();
  for (int i = 0; i < 64; ++i) EXPECT_EQ(b[i], (i % 16) | (((64 + i) % 16) << 4)) << i;
  for (int i = 0; i < 16; ++i) EXPECT_EQ(b[64 + i], ((128 + i) % 16) | (((144 + i) % 16) << 4)) << i;
  EXPECT_FLOAT_EQ(half_at(q4.scales, 0, 0), 1.0F);
  EXPECT_FLOAT_EQ(half_at(q4.mins, 0, 0), 0.0F);
  EXPECT_TRUE(torch::equal(io::dequantize(q4), ramp));
  EXPECT_EQ(q4.bytes(), 80 + 5 * 4);
  // q4s: w = d (q - 8); the signed extreme maps to code 0.
  auto s = torch::tensor({-8.0F, 7.0F, 0.0F, 1.0F}).repeat({8}).view({1, 32});
  auto q4s = io::quantize(s, {QuantKind::kQ4Sym, 32});
  EXPECT_FALSE(q4s.mins.defined());
  EXPECT_FLOAT_EQ(half_at(q4s.scales, 0, 0), 1.0F);
  EXPECT_EQ(q4s.qweight.data_ptr<uint8_t>()[1], 0xFF);  // inputs 1 and 17: 7 -> code 15
  EXPECT_EQ(q4s.qweight.data_ptr<uint8_t>()[2], 0x88);  // inputs 2 and 18: 0 -> code 8
  EXPECT_TRUE(torch::equal(io::dequantize(q4s), s));
  EXPECT_EQ(q4s.bytes(), 16 + 2);
}

TEST(QuantFormat, RoundTripErrorIsBoundedPerElement) {
  torch::manual_seed(1);
  for (const auto& f : kFormats) {
    auto w = torch::randn({33, 256}) * 0.02;
    auto q = io::quantize(w, f);
    auto err = (io::dequantize(q) - w).abs().view({33, -1, f.group});
    auto d = q.scales.to(torch::kFloat32).abs().unsqueeze(2);  // q4s scales are negative (max / -8)
    // q8: half a step (plus the f16 rounding of the scale at the extremes). q4 refits its scale by
    // least squares, which may clip a group's extremes: a step and a half at most.
    const double bound = f.kind == QuantKind::kQ8 ? 0.57 : 1.5;
    EXPECT_TRUE((err <= d * bound + 1e-7).all().item<bool>()) << io::quant_format_name(f);
    const double rel = ((io::dequantize(q) - w).norm() / w.norm()).item<double>();
    EXPECT_LT(rel, f.kind == QuantKind::kQ8 ? 0.01 : 0.13) << io::quant_format_name(f);
  }
}

TEST(QuantFormat, ZeroGroupsAndExtremeValues) {
  for (const auto& f : kFormats) {
    auto w = torch::randn({3, 128}) * 0.01;
    w.index_put_({0}, 0.0F);                                 // an all-zero row
    w.index_put_({1, torch::indexing::Slice(0, 64)}, 0.0F);  // all-zero groups
    w.index_put_({2, 5}, 30.0F);                             // one extreme value in a group
    w.index_put_({2, 70}, -65000.0F / 128);                  // a large one: the f16 scale still fits
    auto q = io::quantize(w, f);
    auto deq = io::dequantize(q);
    EXPECT_TRUE(torch::equal(deq.index({0}), torch::zeros({128}))) << io::quant_format_name(f);
    EXPECT_TRUE(torch::equal(deq.index({1, torch::indexing::Slice(0, 64)}), torch::zeros({64})));
    for (int64_t k : {5, 70}) {
      const float v = w.index({2, k}).item<float>(), d = std::fabs(half_at(q.scales, 2, k / f.group));
      const double bound = f.kind == QuantKind::kQ8 ? 0.57 : 1.5;  // as above
      EXPECT_LE(std::fabs(deq.index({2, k}).item<float>() - v), bound * d) << io::quant_format_name(f) << " k " << k;
    }
  }
}

TEST(QuantFormat, BadShapesAndTensorsThrow) {
  EXPECT_THROW(io::quantize(torch::randn({4, 48}), {QuantKind::kQ8, 32}), UserError);  // K % G
  EXPECT_THROW(io::quantize(torch::randn({4, 32}), {QuantKind::kQ4, 64}), UserError);
  EXPECT_THROW(io::quantize(torch::randn({64}), {QuantKind::kQ8, 32}), UserError);  // 1-D
  EXPECT_THROW(io::quantize(torch::randn({2, 32}), {QuantKind::kQ8, 16}), UserError);
  auto bad = torch::randn({2, 32});
  bad.index_put_({1, 3}, std::numeric_limits<float>::infinity());
  EXPECT_THROW(io::quantize(bad, {QuantKind::kQ8, 32}), UserError);
  auto q = io::quantize(torch::randn({4, 128}), {QuantKind::kQ4, 32});
  EXPECT_NO_THROW(io::make_quant_weight(q.format, q.qweight, q.scales, q.mins, "w"));
  EXPECT_THROW(io::make_quant_weight(q.format, q.qweight, q.scales, torch::Tensor(), "w"), UserError);
  EXPECT_THROW(io::make_quant_weight(q.format, q.qweight, q.scales.narrow(1, 0, 3).contiguous(), q.mins, "w"), UserError);
  EXPECT_THROW(io::make_quant_weight(q.format, q.qweight.to(torch::kInt8), q.scales, q.mins, "w"), UserError);
  EXPECT_THROW(io::make_quant_weight({QuantKind::kQ4Sym, 32}, q.qweight, q.scales, q.mins, "w"), UserError);
  EXPECT_THROW(io::make_quant_weight(q.format, q.qweight, q.scales.to(torch::kFloat32), q.mins, "w"), UserError);
  try {
    io::make_quant_weight(q.format, q.qweight, q.scales.narrow(0, 0, 3).contiguous(), q.mins, "blk.0.w");
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("blk.0.w.scales"), std::string::npos) << e.what();
  }
}

// The measurement that chose the formats (printed; docs/quantization-format.md): relative RMS
// error on Gaussian and Student-t(3) weights, [1024, 2048], with and without q4's refit.
TEST(QuantFormat, ErrorTable) {
  torch::manual_seed(7);
  const auto gauss = torch::randn({1024, 2048}) * 0.02, heavy = student_t3({1024, 2048}) * 0.02;
  std::printf("format    bytes/w  gauss     gauss-norefit  t3        t3-norefit\n");
  std::map<std::string, double> e;
  for (const auto& f : kFormats) {
    const auto name = io::quant_format_name(f);
    const double bpw = static_cast<double>(io::quant_bytes(f, 1, 2048)) / 2048;
    e[name + "g"] = io::detail::relative_rms_error(gauss, f, true);
    e[name + "t"] = io::detail::relative_rms_error(heavy, f, true);
    std::printf("%-9s %.4f   %.5f   %.5f        %.5f   %.5f\n", name.c_str(), bpw, e[name + "g"],
                io::detail::relative_rms_error(gauss, f, false), e[name + "t"],
                io::detail::relative_rms_error(heavy, f, false));
  }
  EXPECT_LT(e["q8_g32g"], e["q8_g64g"]);
  EXPECT_LT(e["q4_g32g"], e["q4_g64g"]);
  EXPECT_LT(e["q8_g32g"], 0.01);
  EXPECT_LT(e["q4_g32g"], 0.12);
}

// ---- kernels ----------------------------------------------------------------------------------

std::vector<QuantKernel> paths() {
  std::vector<QuantKernel> p{QuantKernel::kTorch};
  if (kernels::cpu_has_avx512_bf16()) p.push_back(QuantKernel::kBf16);
  if (kernels::cpu_has_avx2()) p.push_back(QuantKernel::kAvx2);
  if (kernels::cpu_has_avx512_vnni()) p.push_back(QuantKernel::kVnni);
  return p;
}

class QuantKernelTest : public ::testing::TestWithParam<QuantKernel> {
 protected:
  void SetUp() override {
    const auto p = paths();
    if (std::find(p.begin(), p.end(), GetParam()) == p.end())
      GTEST_SKIP() << "this CPU has no " << kernels::quant_kernel_name(GetParam());
  }
};

// x with a zero row and an outlier (weights: test::awkward_weight).

torch::Tensor awkward_x(int64_t M, int64_t K) {
  auto x = torch::randn({M, K});
  if (M > 2) x.index_put_({1}, 0.0F);
  x.index_put_({M - 1, 0}, 40.0F);
  return x;
}

// |y - ref| against the sum of |terms| (f32 accumulation over K terms) or against the bound the
// activation rounding gives: Σ_k |deq w[n, k]| · (max|x| over k's group) / 254.
void expect_close(const torch::Tensor& y, const torch::Tensor& ref, const torch::Tensor& bound, const std::string& what) {
  ASSERT_EQ(y.sizes(), ref.sizes()) << what;
  const auto excess = ((y.to(torch::kFloat64) - ref).abs() - bound).max().item<double>();
  EXPECT_LE(excess, 0.0) << what;
}

TEST_P(QuantKernelTest, MatchesReferenceOnEveryTail) {
  torch::manual_seed(11);
  const auto path = GetParam();
  const bool int8 = path == QuantKernel::kVnni || path == QuantKernel::kAvx2;
  std::vector<int64_t> ms;
  for (int64_t m = 1; m <= 16; ++m) ms.push_back(m);
  for (int64_t m : {17, 21, 32, 47, 64}) ms.push_back(m);
  for (const auto& f : kFormats) {
    // K: one group, a q8 tail of 32 (K % 64), q4 tails of 32, 64, 96 (K % 128); N: 1, row tiles
    // of 4 with remainders, 64-row work units with a remainder.
    for (int64_t K : {32, 64, 96, 160, 192, 288, 512}) {
      if (K % f.group) continue;
      for (int64_t N : {1, 3, 5, 67, 130}) {
        const auto q = io::quantize(awkward_weight(N, K), f);
        const auto absw = io::dequantize(q).abs().to(torch::kFloat64);
        for (int64_t M : ms) {
          if ((M > 4 && M < 16 && N != 67) || (M > 16 && K > 192)) continue;  // keep the sweep short
          const auto x = awkward_x(M, K);
          const std::string what = io::quant_format_name(f) + " M " + std::to_string(M) + " N " +
                                   std::to_string(N) + " K " + std::to_string(K);
          const auto y = kernels::quant_linear(x, q, path);
          const auto terms = torch::matmul(x.abs().to(torch::kFloat64), absw.t());
          if (path == QuantKernel::kBf16) {  // x and the weight rounded to bf16: up to 2^-8 relative each
            expect_close(y, kernels::quant_linear_reference(x, q, false), terms * 8e-3 + 1e-6, what + " bf16");
            continue;
          }
          expect_close(y, kernels::quant_linear_reference(x, q, int8), terms * 2e-6 + 1e-6, what + " tight");
          if (int8) {
            const auto amax = x.abs().view({M, -1, f.group}).amax(2, true).expand({M, K / f.group, f.group});
            const auto xbound = (amax.reshape({M, K}) / 254).to(torch::kFloat64);
            expect_close(y, kernels::quant_linear_reference(x, q, false),
                         torch::matmul(xbound, absw.t()) * 1.001 + terms * 2e-6 + 1e-6, what + " loose");
          }
        }
      }
    }
  }
}

TEST_P(QuantKernelTest, Bf16InputAndLlada2ExpertShapes) {
  torch::manual_seed(12);
  for (const auto& f : {QuantFormat{QuantKind::kQ8, 32}, QuantFormat{QuantKind::kQ4, 32}}) {
    for (auto nk : std::vector<std::pair<int64_t, int64_t>>{{512, 2048}, {2048, 512}}) {
      const auto q = io::quantize(torch::randn({nk.first, nk.second}) * 0.02, f);
      for (int64_t M : {1, 4, 16}) {
        const auto x = torch::randn({M, nk.second}).to(torch::kBFloat16);
        const auto y = kernels::quant_linear(x, q, GetParam());
        const bool int8 = GetParam() == QuantKernel::kVnni || GetParam() == QuantKernel::kAvx2;
        const auto ref = kernels::quant_linear_reference(x, q, int8);
        // torch's and the bf16 path multiply in bf16 (the weight rounded to bf16): 2^-8 per term.
        const double tol = (int8 ? 2e-6 : 8e-3) * ref.abs().max().item<double>() * std::sqrt(nk.second);
        EXPECT_LT((y.to(torch::kFloat64) - ref).abs().max().item<double>(), tol) << io::quant_format_name(f) << " M " << M;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Paths, QuantKernelTest,
                         ::testing::Values(QuantKernel::kVnni, QuantKernel::kAvx2, QuantKernel::kBf16,
                                           QuantKernel::kTorch),
                         [](const auto& info) { return std::string(kernels::quant_kernel_name(info.param)); });

TEST(QuantKernels, SwiGluMatchesComposition) {
  torch::manual_seed(13);
  const QuantFormat f{QuantKind::kQ4, 32};
  const auto gate = io::quantize(torch::randn({96, 64}) * 0.1, f), up = io::quantize(torch::randn({96, 64}) * 0.1, f);
  const auto down = io::quantize(torch::randn({64, 96}) * 0.1, f);
  const auto x = torch::randn({4, 64});
  const auto y = kernels::quant_swiglu(x, gate, up, down);
  ASSERT_EQ(y.scalar_type(), torch::kBFloat16);
  const auto g = kernels::quant_linear_reference(x, gate, false), u = kernels::quant_linear_reference(x, up, false);
  const auto ref = kernels::quant_linear_reference((torch::silu(g) * u).to(torch::kFloat32), down, false);
  EXPECT_LT((y.to(torch::kFloat64) - ref).abs().max().item<double>(), 0.02 * ref.abs().max().item<double>());
  EXPECT_THROW(kernels::quant_swiglu(x, gate, up, gate), UserError);
}

TEST(QuantKernels, BadShapesAndNamesThrow) {
  const auto q = io::quantize(torch::randn({8, 64}), {QuantKind::kQ8, 32});
  EXPECT_THROW(kernels::quant_linear(torch::randn({2, 32}), q), UserError);
  EXPECT_THROW(kernels::quant_linear(torch::randn({2, 2, 64}), q), UserError);
  EXPECT_THROW(kernels::quant_linear(torch::randn({2, 64}).to(torch::kFloat64), q), UserError);
  EXPECT_THROW(kernels::parse_quant_kernel("amx", "--quant-kernel"), UserError);
  EXPECT_EQ(kernels::parse_quant_kernel("torch", "--quant-kernel"), QuantKernel::kTorch);
  EXPECT_EQ(kernels::quant_linear(torch::randn({0, 64}), q).sizes(), (std::vector<int64_t>{0, 8}));
}

TEST(QuantKernels, AutoPicksTheBestPathAndTorchForManyRows) {
  kernels::set_quant_kernel(QuantKernel::kAuto);
  const auto b = kernels::quant_kernel_backend();
  EXPECT_EQ(b, kernels::cpu_has_avx512_vnni() ? QuantKernel::kVnni
                                              : kernels::cpu_has_avx2() ? QuantKernel::kAvx2 : QuantKernel::kTorch);
  const auto q = io::quantize(torch::randn({16, 64}), {QuantKind::kQ8, 32});
  const auto x = torch::randn({kernels::quant_max_rows() + 1, 64});
  // More rows than the kernels take: torch's path, exact in f32.
  EXPECT_LT((kernels::quant_linear(x, q).to(torch::kFloat64) - kernels::quant_linear_reference(x, q, false))
                .abs()
                .max()
                .item<double>(),
            1e-4);
  // bf16 x: auto keeps the int8 tiles (the bf16 path is opt-in).
  if (!kernels::cpu_has_avx512_bf16() || b != QuantKernel::kVnni) return;
  const auto w = io::quantize(torch::randn({40, 128}), {QuantKind::kQ4, 32});
  const auto xb = torch::randn({32, 128}).to(torch::kBFloat16);
  EXPECT_TRUE(torch::equal(kernels::quant_linear(xb, w), kernels::quant_linear(xb, w, QuantKernel::kVnni)));
}

}  // namespace
}  // namespace ecdlm
