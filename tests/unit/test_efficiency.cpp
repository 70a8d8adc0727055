// Learning-efficiency analysis: eta_b recovered from synthetic L_b(t) = A_b exp(-eta_b t).
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <random>

#include "../test_util.h"
#include "ecdlm/eval/efficiency.h"
#include "ecdlm/util/error.h"

namespace ecdlm {
namespace {

const std::vector<double> kEta4 = {8e-4, 4e-4, 2e-4, 1e-4};  // per step, low r -> high r
const std::vector<double> kA4 = {7.0, 7.2, 7.3, 7.4};

// Writes RUN/metrics.jsonl with train lines interleaved and validation every `every` steps.
// `noise` multiplies each loss by exp(N(0, noise)).
std::string write_run(const std::string& tag, const std::vector<double>& eta, const std::vector<double>& a,
                      int64_t n_val, int64_t every = 100, double noise = 0.0, int64_t nbins = 4) {
  const auto dir = test::temp_dir(tag);
  std::ofstream out(dir + "/metrics.jsonl");
  std::mt19937 rng(7);
  std::normal_distribution<double> nd(0.0, noise > 0 ? noise : 1.0);
  for (int64_t i = 1; i <= n_val; ++i) {
    const int64_t step = i * every;
    out << nlohmann::json({{"step", step - every / 2}, {"loss", 9.0}}).dump() << "\n";
    nlohmann::json bins = nlohmann::json::array();
    for (int64_t b = 0; b < nbins; ++b) {
      double l = a[b] * std::exp(-eta[b] * static_cast<double>(step));
      if (noise > 0) l *= std::exp(nd(rng));
      bins.push_back({{"lo", double(b) / nbins}, {"hi", double(b + 1) / nbins}, {"loss", l}, {"count", 32}});
    }
    out << nlohmann::json({{"step", step}, {"tokens", step * 4096}, {"elapsed_s", step * 0.5}, {"val_loss", 7.0},
                           {"val_per_bin", {{std::to_string(nbins), bins}}}})
               .dump()
        << "\n";
  }
  return dir;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const UserError& e) {
    return e.what();
  }
  return "(no UserError)";
}

TEST(Efficiency, RecoversExactRatesWithoutSmoothing) {
  EfficiencyOptions opt;
  opt.smooth = 1;
  auto rc = load_run_curves(write_run("eff-exact", kEta4, kA4, 10), opt);
  ASSERT_EQ(rc.bins.size(), 4u);
  auto re = analyze_run(rc, opt);
  EXPECT_DOUBLE_EQ(re.fit_from, 100);
  EXPECT_DOUBLE_EQ(re.fit_to, 1000);
  for (size_t b = 0; b < 4; ++b) {
    EXPECT_NEAR(re.bins[b].eta, kEta4[b], 1e-6 * kEta4[b]) << "bin " << b;
    EXPECT_NEAR(re.bins[b].eta_over_high, kEta4[b] / kEta4[3], 1e-6);
    EXPECT_EQ(re.bins[b].points, 10);
    EXPECT_NEAR(re.bins[b].final_loss, kA4[b] * std::exp(-kEta4[b] * 1000), 1e-9);
  }
}

TEST(Efficiency, SmoothingKeepsExactRatesAndTamesNoise) {
  EfficiencyOptions opt;  // smooth = 3
  auto re = analyze_run(load_run_curves(write_run("eff-smooth", kEta4, kA4, 10), opt), opt);
  for (size_t b = 0; b < 4; ++b) EXPECT_NEAR(re.bins[b].eta, kEta4[b], 1e-6 * kEta4[b]);
  // Noise of 0.2% per point on ln L over a 0.1 .. 0.8 total drop: a few % of error at most.
  opt.smooth = 5;
  re = analyze_run(load_run_curves(write_run("eff-noise", kEta4, kA4, 40, 25, 0.002), opt), opt);
  for (size_t b = 0; b < 4; ++b) EXPECT_NEAR(re.bins[b].eta, kEta4[b], 0.05 * kEta4[b]) << "bin " << b;
}

TEST(Efficiency, MovingAverageShrinksAtEnds) {
  auto v = centered_moving_average({1, 2, 4, 8, 16}, 3);
  EXPECT_DOUBLE_EQ(v[0], 1);
  EXPECT_DOUBLE_EQ(v[1], 7.0 / 3);
  EXPECT_DOUBLE_EQ(v[4], 16);
  EXPECT_EQ(centered_moving_average({3, 5}, 1), (std::vector<double>{3, 5}));
}

TEST(Efficiency, WindowAndExplicitRangeAndAxes) {
  // Rate changes at step 500: fit windows must see only their segment.
  const auto dir = test::temp_dir("eff-window");
  {
    std::ofstream out(dir + "/metrics.jsonl");
    for (int64_t step = 100; step <= 1000; step += 100) {
      const double l = step <= 500 ? 5.0 * std::exp(-1e-3 * step) : 5.0 * std::exp(-0.5 - 2e-4 * (step - 500));
      nlohmann::json bins = {{{"lo", 0.0}, {"hi", 0.5}, {"loss", l}, {"count", 3}},
                             {{"lo", 0.5}, {"hi", 1.0}, {"loss", l}, {"count", 3}}};
      out << nlohmann::json({{"step", step}, {"tokens", step * 10}, {"val_loss", l}, {"val_per_bin", {{"2", bins}}}})
                 .dump()
          << "\n";
    }
  }
  EfficiencyOptions opt;
  opt.bins = "2";
  opt.smooth = 1;
  opt.window = 0.5;  // x in [550, 1000]
  EXPECT_NEAR(analyze_run(load_run_curves(dir, opt), opt).bins[0].eta, 2e-4, 1e-9);
  opt.window = 1.0;
  opt.x_from = 100, opt.x_to = 500;
  EXPECT_NEAR(analyze_run(load_run_curves(dir, opt), opt).bins[0].eta, 1e-3, 1e-9);
  opt.axis = EffAxis::kTokens;  // same curve, x 10x larger: eta 10x smaller
  opt.x_from = 1000, opt.x_to = 5000;
  EXPECT_NEAR(analyze_run(load_run_curves(dir, opt), opt).bins[0].eta, 1e-4, 1e-10);
  opt.x_from = 1000, opt.x_to = 1000;
  EXPECT_NE(error_of([&] { analyze_run(load_run_curves(dir, opt), opt); }).find("fit range"), std::string::npos);
  opt.axis = EffAxis::kElapsed;  // not logged in this file
  EXPECT_NE(error_of([&] { load_run_curves(dir, opt); }).find("elapsed_s"), std::string::npos);
}

TEST(Efficiency, RatioBetweenRuns) {
  std::vector<double> faster = kEta4;
  faster[0] *= 2.0, faster[1] *= 1.5;
  EfficiencyOptions opt;
  opt.smooth = 1;
  auto runs = analyze_runs({load_run_curves(write_run("eff-base", kEta4, kA4, 8), opt),
                            load_run_curves(write_run("eff-fast", faster, kA4, 8), opt)},
                           opt);
  ASSERT_EQ(runs.size(), 2u);
  const std::vector<double> want = {2.0, 1.5, 1.0, 1.0};
  for (size_t b = 0; b < 4; ++b) {
    EXPECT_NEAR(runs[1].bins[b].eta_over_baseline, want[b], 1e-6);
    EXPECT_NEAR(runs[0].bins[b].eta_over_baseline, 1.0, 1e-12);
  }
  auto j = efficiency_json(runs, opt);
  EXPECT_EQ(j["runs"].size(), 2u);
  EXPECT_NEAR(j["runs"][1]["bins"][0]["eta_over_baseline"].get<double>(), 2.0, 1e-6);
  EXPECT_NEAR(j["runs"][0]["bins"][0]["eta_per_1000"].get<double>(), 0.8, 1e-6);
  const auto md = efficiency_markdown(runs, opt);
  EXPECT_NE(md.find("| [0, 0.25) |"), std::string::npos) << md;
  EXPECT_NE(md.find("| [0.75, 1] |"), std::string::npos) << md;
  EXPECT_NE(md.find("2.000"), std::string::npos) << md;
}

TEST(Efficiency, Errors) {
  EfficiencyOptions opt;
  const auto empty = test::temp_dir("eff-none");
  EXPECT_NE(error_of([&] { load_run_curves(empty, opt); }).find("no metrics.jsonl"), std::string::npos);
  {
    std::ofstream(empty + "/metrics.jsonl") << "{\"step\":10,\"loss\":9.0}\n";
  }
  EXPECT_NE(error_of([&] { load_run_curves(empty, opt); }).find("no validation lines"), std::string::npos);
  EXPECT_NE(error_of([&] { load_run_curves(write_run("eff-few", kEta4, kA4, 2), opt); }).find("at least 3"),
            std::string::npos);
  opt.bins = "10";
  const auto msg = error_of([&] { load_run_curves(write_run("eff-bins", kEta4, kA4, 5), opt); });
  EXPECT_NE(msg.find("has: 4"), std::string::npos) << msg;
  // Same count, different edges; and a different count.
  opt.bins = "4";
  auto base = load_run_curves(write_run("eff-e1", kEta4, kA4, 5), opt);
  auto other = base;
  other.run_dir = "other";
  other.bins[1].lo = 0.3;
  EXPECT_NE(error_of([&] { analyze_runs({base, other}, opt); }).find("bin edges differ"), std::string::npos);
  other.bins.pop_back();
  EXPECT_NE(error_of([&] { analyze_runs({base, other}, opt); }).find("bin edges differ"), std::string::npos);
  EXPECT_NE(error_of([] { parse_eff_axis("epoch"); }).find("--x"), std::string::npos);
}

TEST(Efficiency, EmptyBinPointsAreSkipped) {
  const auto dir = write_run("eff-empty", kEta4, kA4, 6);
  // Rewrite: zero the count of bin 0 at the first validation line.
  std::ifstream in(dir + "/metrics.jsonl");
  std::string text, line;
  bool done = false;
  while (std::getline(in, line)) {
    auto j = nlohmann::json::parse(line);
    if (!done && j.contains("val_per_bin")) j["val_per_bin"]["4"][0]["count"] = 0, j["val_per_bin"]["4"][0]["loss"] = 0.0, done = true;
    text += j.dump() + "\n";
  }
  in.close();
  std::ofstream(dir + "/metrics.jsonl") << text;
  EfficiencyOptions opt;
  opt.smooth = 1;
  auto rc = load_run_curves(dir, opt);
  EXPECT_EQ(rc.bins[0].x.size(), 5u);
  EXPECT_EQ(rc.bins[1].x.size(), 6u);
  EXPECT_NEAR(analyze_run(rc, opt).bins[0].eta, kEta4[0], 1e-6 * kEta4[0]);
}

}  // namespace
}  // namespace ecdlm
