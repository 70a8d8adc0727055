// Capacity schedules k(r) and C (ec-dlm.md §3), and the norm-matching factors phi(n) (§2.3).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <string>
#include <vector>

#include "ecdlm/moe/capacity.h"
#include "ecdlm/moe/scaling.h"
#include "ecdlm/util/error.h"

namespace ecdlm::moe {
namespace {

// ---------------------------------------------------------------------------------------------
// phi(n)

TEST(PhiTable, MatchesSpecTable) {
  const auto& phi = ec_scaling_table(64, 2.0);
  ASSERT_EQ(phi.size(), 65u);
  EXPECT_EQ(phi[0], 1.0f);
  // n = 1: the single renormalized probability is 1, so phi(1) = sqrt(S_sh) exactly.
  EXPECT_NEAR(phi[1], std::sqrt(2.0), 1e-6);
  const std::vector<std::pair<int, double>> spec = {
      {2, 1.798},  {3, 2.081},  {4, 2.318},  {6, 2.701},  {8, 3.030},  {10, 3.313},
      {12, 3.578}, {14, 3.811}, {16, 4.037}, {20, 4.415}, {24, 4.803}, {28, 5.106},
      {32, 5.429}, {40, 5.992}, {48, 6.490}, {64, 7.404}};
  for (const auto& [n, v] : spec) EXPECT_NEAR(phi[n], v, 0.01 * v) << "phi(" << n << ")";
  for (int n = 2; n <= 64; ++n) EXPECT_GT(phi[n], phi[n - 1]) << "not increasing at n=" << n;
  // Upper bound: ||p||_2 >= 1/sqrt(n) => phi(n) <= sqrt(S_sh * n).
  for (int n = 1; n <= 64; ++n) EXPECT_LE(phi[n], std::sqrt(2.0 * n) + 1e-5) << n;
}

TEST(PhiTable, CachedScalesWithSqrtSshAndPrefixConsistent) {
  const auto& a = ec_scaling_table(8, 2.0);
  const auto& b = ec_scaling_table(8, 2.0);
  EXPECT_EQ(&a, &b) << "table not cached";
  const auto& c = ec_scaling_table(8, 8.0);  // sqrt(8) / sqrt(2) = 2
  for (int n = 1; n <= 8; ++n) EXPECT_NEAR(c[n], 2.0 * a[n], 1e-5 * c[n]) << n;
  // Same seed, same draws: the first entries do not depend on max_n.
  const auto& big = ec_scaling_table(64, 2.0);
  for (int n = 0; n <= 8; ++n) EXPECT_EQ(a[n], big[n]) << n;
}

TEST(PhiTcFactor, MatchesSpecEstimates) {
  // ec-dlm.md §4.1: ~3.63 for E=64, k=8 (S_sh=2). k=1: the single gate is 1 -> sqrt(2).
  EXPECT_NEAR(tc_scaling_factor(64, 8, 2.0), 3.63, 0.02 * 3.63);
  EXPECT_NEAR(tc_scaling_factor(16, 1, 2.0), std::sqrt(2.0), 1e-9);
  EXPECT_LE(tc_scaling_factor(16, 4, 2.0), std::sqrt(2.0 * 4) + 1e-9);
}

// ---------------------------------------------------------------------------------------------
// Schedules

struct SchedCase {
  std::string name;
  Schedule s;
  std::vector<double> k;  // at r = 1/512, .25, .5, .75, 1
};
std::ostream& operator<<(std::ostream& os, const SchedCase& c) { return os << c.name; }
class CapacitySchedules : public ::testing::TestWithParam<SchedCase> {};

TEST_P(CapacitySchedules, SpecSampleValues) {
  const auto& c = GetParam();
  CapacitySchedule sch(c.s, 20, 8, 32, 0.22);
  const float rs[] = {1.0f / 512.0f, 0.25f, 0.5f, 0.75f, 1.0f};
  for (int i = 0; i < 5; ++i) EXPECT_EQ(sch.k_for(rs[i]), c.k[i]) << "r=" << rs[i];
  // k(r) is an integer in [k_min, k_max] everywhere, the shape in [0, 1].
  for (int m = 1; m <= 512; ++m) {
    const float r = static_cast<float>(m) / 512.0f;
    const double k = sch.k_for(r);
    EXPECT_EQ(k, std::floor(k));
    EXPECT_GE(k, 8.0);
    EXPECT_LE(k, 32.0);
    EXPECT_GE(sch.shape(r), 0.0f);
    EXPECT_LE(sch.shape(r), 1.0f);
  }
}

TEST_P(CapacitySchedules, ExpectedKMatchesFlops) {
  const auto& c = GetParam();
  CapacitySchedule sch(c.s, 20, 8, 32, 0.22);
  const double ek = sch.expected_k(512);
  switch (c.s) {
    case Schedule::kGaussian: EXPECT_NEAR(ek, 20.004, 2e-3); break;
    case Schedule::kGaussianReverse: EXPECT_NEAR(ek, 19.996, 2e-3); break;
    default: EXPECT_NEAR(ek, 20.000, 1e-3); break;
  }
  // Probabilities of the realized-r distribution sum to one: a constant k has E[k] = k.
  EXPECT_NEAR(CapacitySchedule(c.s, 20, 13, 13).expected_k(512), 13.0, 1e-9);
}

TEST_P(CapacitySchedules, NameRoundTrip) {
  const auto& c = GetParam();
  EXPECT_EQ(parse_schedule(schedule_name(c.s)), c.s);
  std::string underscored = schedule_name(c.s);
  for (auto& ch : underscored)
    if (ch == '-') ch = '_';
  EXPECT_EQ(parse_schedule(underscored), c.s);
}

INSTANTIATE_TEST_SUITE_P(
    CapacitySpec, CapacitySchedules,
    ::testing::Values(SchedCase{"linear_reverse", Schedule::kLinearReverse, {32, 26, 20, 14, 8}},
                      SchedCase{"linear", Schedule::kLinear, {8, 14, 20, 26, 32}},
                      SchedCase{"cosine_reverse", Schedule::kCosineReverse, {32, 28, 20, 12, 8}},
                      SchedCase{"cosine", Schedule::kCosine, {8, 12, 20, 28, 32}},
                      SchedCase{"gaussian", Schedule::kGaussian, {8, 20, 32, 20, 8}},
                      SchedCase{"gaussian_reverse", Schedule::kGaussianReverse, {32, 20, 8, 20, 32}}),
    [](const ::testing::TestParamInfo<SchedCase>& i) { return i.param.name; });

TEST(CapacitySchedule, BankersRounding) {
  // Exactly representable halves: k_min + (k_max - k_min) * r.
  EXPECT_EQ(CapacitySchedule(Schedule::kLinear, 0, 10, 11).k_for(0.5f), 10.0);  // 10.5 -> 10
  EXPECT_EQ(CapacitySchedule(Schedule::kLinear, 0, 11, 12).k_for(0.5f), 12.0);  // 11.5 -> 12
  CapacitySchedule lin(Schedule::kLinear, 0, 8, 32);
  EXPECT_EQ(lin.k_for(0.1875f), 12.0);  // 8 + 24 * 3/16 = 12.5 -> 12 (std::round would give 13)
  EXPECT_EQ(lin.k_for(0.0625f), 10.0);  // 9.5 -> 10
  EXPECT_EQ(lin.k_for(0.3125f), 16.0);  // 15.5 -> 16
  CapacitySchedule rev(Schedule::kLinearReverse, 0, 8, 32);
  EXPECT_EQ(rev.k_for(0.8125f), 12.0);  // 8 + 24 * 3/16 = 12.5 -> 12
}

TEST(CapacitySchedule, StaticIsUnroundedConstant) {
  auto s = CapacitySchedule::make_static(2.5);
  EXPECT_EQ(s.schedule(), Schedule::kStatic);
  EXPECT_EQ(s.k_for(0.1f), 2.5);
  EXPECT_EQ(s.k_for(0.9f), 2.5);
  EXPECT_EQ(s.k_min(), 2.5);
  EXPECT_EQ(s.k_max(), 2.5);
  EXPECT_DOUBLE_EQ(s.expected_k(100), 2.5);
  // Static ignores given k_min / k_max.
  CapacitySchedule s2(Schedule::kStatic, 20, 8, 32);
  EXPECT_EQ(s2.k_for(0.0f), 20.0);
  EXPECT_EQ(s2.k_min(), 20.0);
}

TEST(CapacitySchedule, CapacityIsFloorMinOneCappedAtL) {
  torch::manual_seed(51);
  // OWT: L = E = 512 -> C = k.
  auto s20 = CapacitySchedule::make_static(20);
  EXPECT_EQ(s20.static_capacity(512, 512), 20);
  EXPECT_EQ(s20.capacity(torch::tensor({0.3f, 0.9f}), 512, 512).eq(20).all().item<bool>(), true);
  // floor: 10 * 2 / 8 = 2.5 -> 2.
  EXPECT_EQ(CapacitySchedule::make_static(2).static_capacity(10, 8), 2);
  // min 1: 10 * 2 / 64 = 0.31 -> 1.
  EXPECT_EQ(CapacitySchedule::make_static(2).static_capacity(10, 64), 1);
  // cap at L: k = E -> C = L; k > E (not allowed by validate) still capped.
  EXPECT_EQ(CapacitySchedule::make_static(8).static_capacity(12, 8), 12);
  EXPECT_EQ(CapacitySchedule::make_static(16).static_capacity(12, 8), 12);
  // Nemotron dynamic: L = 2048, E = 64, linear-reverse 2..14: C = 32 * k(r).
  CapacitySchedule lr(Schedule::kLinearReverse, 8, 2, 14);
  auto C = lr.capacity(torch::tensor({1.0f / 2048.0f, 0.5f, 1.0f}), 2048, 64);
  EXPECT_EQ(C.scalar_type(), torch::kInt64);
  EXPECT_EQ(C[0].item<int64_t>(), 32 * 14);
  EXPECT_EQ(C[1].item<int64_t>(), 32 * 8);
  EXPECT_EQ(C[2].item<int64_t>(), 32 * 2);
  // OWT dynamic: C_b = k_b.
  CapacitySchedule lr2(Schedule::kLinearReverse, 20, 8, 32);
  auto C2 = lr2.capacity(torch::tensor({1.0f / 512.0f, 0.25f, 0.5f, 0.75f, 1.0f}), 512, 512);
  EXPECT_EQ(std::vector<int64_t>(C2.data_ptr<int64_t>(), C2.data_ptr<int64_t>() + 5),
            (std::vector<int64_t>{32, 26, 20, 14, 8}));
  // Small L with dynamic capacity: floor(L * k / E) with min 1 and cap L.
  auto C3 = lr2.capacity(torch::tensor({0.01f, 1.0f}), 4, 8);  // k = 32 -> 16 -> capped 4; k=8 -> 4
  EXPECT_EQ(C3[0].item<int64_t>(), 4);
  EXPECT_EQ(C3[1].item<int64_t>(), 4);
  auto C4 = lr2.capacity(torch::tensor({1.0f}), 4, 64);  // 4 * 8 / 64 = 0.5 -> 1
  EXPECT_EQ(C4[0].item<int64_t>(), 1);
  // Nemotron static k=8: 2048 * 8 / 64 = 256.
  EXPECT_EQ(CapacitySchedule::make_static(8).static_capacity(2048, 64), 256);
}

TEST(CapacitySchedule, ParseScheduleAcceptsBothSpellingsAndRejectsJunk) {
  EXPECT_EQ(parse_schedule("linear_reverse"), Schedule::kLinearReverse);
  EXPECT_EQ(parse_schedule("linear-reverse"), Schedule::kLinearReverse);
  EXPECT_EQ(parse_schedule("static"), Schedule::kStatic);
  EXPECT_EQ(parse_schedule("cosine_reverse"), Schedule::kCosineReverse);
  EXPECT_EQ(parse_schedule("gaussian-reverse"), Schedule::kGaussianReverse);
  for (const char* junk : {"", "lin", "Linear", "linear reverse", "bell", "cosine--reverse"}) {
    try {
      parse_schedule(junk);
      ADD_FAILURE() << "accepted '" << junk << "'";
    } catch (const ecdlm::UserError& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find("moe_capacity_schedule"), std::string::npos) << msg;
      EXPECT_NE(msg.find("linear-reverse"), std::string::npos) << "lists valid names: " << msg;
    }
  }
  EXPECT_EQ(schedule_name(Schedule::kCosine), "cosine");
}

TEST(CapacitySchedule, ShapeEndpoints) {
  const float eps = 1e-6f;
  EXPECT_NEAR(CapacitySchedule(Schedule::kLinear, 0, 0, 1).shape(0.3f), 0.3f, eps);
  EXPECT_NEAR(CapacitySchedule(Schedule::kLinearReverse, 0, 0, 1).shape(0.3f), 0.7f, eps);
  EXPECT_NEAR(CapacitySchedule(Schedule::kCosine, 0, 0, 1).shape(0.0f), 0.0f, eps);
  EXPECT_NEAR(CapacitySchedule(Schedule::kCosine, 0, 0, 1).shape(1.0f), 1.0f, eps);
  EXPECT_NEAR(CapacitySchedule(Schedule::kCosineReverse, 0, 0, 1).shape(0.0f), 1.0f, eps);
  EXPECT_NEAR(CapacitySchedule(Schedule::kCosineReverse, 0, 0, 1).shape(0.5f), 0.5f, eps);
  CapacitySchedule g(Schedule::kGaussian, 0, 0, 1, 0.22);
  EXPECT_NEAR(g.shape(0.5f), 1.0f, eps);
  EXPECT_NEAR(g.shape(0.0f), 0.0f, eps);
  EXPECT_NEAR(g.shape(1.0f), 0.0f, eps);
  EXPECT_NEAR(CapacitySchedule(Schedule::kGaussianReverse, 0, 0, 1, 0.22).shape(0.5f), 0.0f, eps);
}

}  // namespace
}  // namespace ecdlm::moe
