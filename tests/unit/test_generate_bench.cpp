// `bench generate` bookkeeping: KV-cache speedups pair cache on/off runs of the same model, routing
// and small-M kernel, repetition by repetition; JSON and markdown carry the kernel; the plot labels
// each policy's point and draws a line only through the ordered block-p sweep.
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "../test_util.h"
#include "ecdlm/bench/generate_bench.h"
#include "ecdlm/bench/generate_plot.h"

namespace ecdlm::bench {
namespace {

GenBenchRow row(const std::string& routing, bool kv, const std::string& kernel, std::vector<double> tps) {
  GenBenchRow r;
  r.model = "m";
  r.routing = routing;
  r.kv_cache = kv;
  r.kernel = kernel;
  r.gen_length = 256;
  r.tokens_per_s_reps = tps;
  r.tokens_per_s = tps[tps.size() / 2];
  return r;
}

TEST(GenerateBench, CacheRatiosPairByKernelAndRepetition) {
  std::vector<GenBenchRow> rows = {row("token", true, "torch", {10, 12, 11}), row("token", false, "torch", {5, 4, 5}),
                                   row("token", true, "auto", {16, 15, 18}), row("token", false, "auto", {4, 5, 6})};
  const auto kv = cache_ratios(rows);
  ASSERT_EQ(kv.size(), 2U);
  EXPECT_EQ(kv[0].kernel, "torch");
  EXPECT_EQ(kv[0].ratios, (std::vector<double>{2.0, 3.0, 2.2}));
  EXPECT_DOUBLE_EQ(kv[0].median, 2.2);
  EXPECT_EQ(kv[1].kernel, "auto");
  EXPECT_EQ(kv[1].ratios, (std::vector<double>{4.0, 3.0, 3.0}));
  EXPECT_DOUBLE_EQ(kv[1].median, 3.0);
  const auto j = to_json(rows);
  EXPECT_EQ(j["results"][2]["kernel"], "auto");
  EXPECT_EQ(j["kv_cache_speedup"][1]["kernel"], "auto");
  EXPECT_DOUBLE_EQ(j["kv_cache_speedup"][1]["speedup_median"].get<double>(), 3.0);
  const auto md = to_markdown(rows, GenBenchParams{});
  EXPECT_NE(md.find("| m | token | on | auto |"), std::string::npos) << md;
  EXPECT_NE(md.find("| m | token | auto | 256 | 3.00x |"), std::string::npos) << md;
}


// The streaming table's ceiling: the MoE's bytes at the run's read bandwidth, the other parts as
// measured, and a quantized row's step there against bf16's measured step.
TEST(GenerateBench, StepAtTheMoeFloor) {
  auto r = row("token", true, "auto", {30.0});
  r.stream_gbps = 50;                // GB/s
  r.moe_bytes_per_forward = 250e6;   // 5 ms at 50 GB/s
  r.moe_ms_per_forward = 12;
  r.ms_per_forward = 27;             // 15 ms besides the MoE
  r.weights = "q4";
  EXPECT_DOUBLE_EQ(step_ms_at_moe_floor(r), 20.0);
  auto b = row("token", true, "auto", {15.0});
  b.weights = "bf16";
  b.stream_gbps = 50;
  b.moe_bytes_per_forward = 1000e6;
  b.moe_ms_per_forward = 40;
  b.ms_per_forward = 60;
  const auto md = to_markdown({b, r}, GenBenchParams{});
  EXPECT_NE(md.find("| 20.00 | 3.00x |"), std::string::npos) << md;  // q4: 60 / 20
  EXPECT_NE(md.find("| 40.00 | - |"), std::string::npos) << md;      // bf16's own floor, no ratio
  EXPECT_DOUBLE_EQ(to_json({b, r})["results"][1]["ms_per_forward_at_moe_floor"].get<double>(), 20.0);
  r.stream_gbps = 0;  // no measured bandwidth: no floor
  EXPECT_EQ(step_ms_at_moe_floor(r), 0.0);
}

GenBenchRow point(const std::string& routing, double p, int64_t g, double experts, double moe_ms) {
  GenBenchRow r = row(routing, true, "auto", {1.0});
  r.top_p = p;
  r.block_min_experts = g;
  r.unique_experts_per_block = experts;
  r.moe_ms_per_forward = moe_ms;
  return r;
}

TEST(GenerateBench, PlotLabelsPointsAndLinesOnlyTheBlockSweep) {
  // Table order (as the bench emits it): p 0.5, 0.6, then G 12, then 0.8: a line in this order
  // would double back.
  std::vector<GenBenchRow> rows = {point("token", 0, 0, 68, 54),        point("block", 0.5, 16, 14.6, 17),
                                   point("block", 0.6, 16, 16.7, 19),   point("block", 0.6, 12, 14.7, 17.2),
                                   point("block", 0.8, 16, 27.4, 26),   point("topk", 0, 0, 34.5, 29),
                                   point("ec", 0, 0, 256, 230),         row("token", false, "auto", {1.0})};
  const auto series = plot_series(rows);
  ASSERT_EQ(series.size(), 2U);  // the points, and one sweep (G 12 has a single p: no line)
  const auto& pts = series[0];
  EXPECT_EQ(pts.style, Series::Style::kPoints);
  EXPECT_EQ(pts.labels, (std::vector<std::string>{"token", "block p=0.5 G=16", "block p=0.6 G=16",
                                                  "block p=0.6 G=12", "block p=0.8 G=16", "topk", "ec"}));
  EXPECT_EQ(pts.x.size(), 7U);  // the cache-off row is not plotted
  const auto& line = series[1];
  EXPECT_EQ(line.style, Series::Style::kLines);
  EXPECT_EQ(line.name, "m: block p sweep, G=16");
  EXPECT_EQ(line.x, (std::vector<double>{14.6, 16.7, 27.4}));  // sorted by p
  EXPECT_EQ(line.y, (std::vector<double>{17, 19, 26}));

  // The script draws points and their labels; only the sweep uses lines.
  const auto dir = ecdlm::test::temp_dir("gen-plot");
  plot_generate(rows, dir + "/p.png");
  std::ifstream gp(dir + "/p.png.gp");
  std::stringstream ss;
  ss << gp.rdbuf();
  const std::string script = ss.str();
  EXPECT_NE(script.find("index 0 using 1:2 with points"), std::string::npos) << script;
  EXPECT_NE(script.find("index 0 using 1:4:3 with labels"), std::string::npos) << script;
  EXPECT_NE(script.find("index 1 using 1:2 with lines"), std::string::npos) << script;
  EXPECT_EQ(script.find("index 0 using 1:2 with lines"), std::string::npos) << script;

  // A saved `--out-json` document plots the same rows.
  const auto back = rows_from_json(to_json(rows), "rows.json");
  ASSERT_EQ(back.size(), rows.size());
  EXPECT_EQ(plot_series(back)[1].x, line.x);
  EXPECT_THROW(rows_from_json(nlohmann::json{{"results", {{{"model", "m"}}}}}, "bad.json"), std::exception);
}

}  // namespace
}  // namespace ecdlm::bench
