// `bench generate` bookkeeping: KV-cache speedups pair cache on/off runs of the same model, routing
// and small-M kernel, repetition by repetition; JSON and markdown carry the kernel.
#include <gtest/gtest.h>

#include "ecdlm/bench/generate_bench.h"

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

}  // namespace
}  // namespace ecdlm::bench
