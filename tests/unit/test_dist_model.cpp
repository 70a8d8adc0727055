// The EP scaling model's per-layer arithmetic (bench/dist_model.h): who owns which expert, the
// most-loaded rank, the rows that cross the network, drops under a capacity, replicas for EP > E.
#include <gtest/gtest.h>

#include "ecdlm/bench/dist_model.h"

using ecdlm::bench::ep_layer_cost;

namespace {

std::vector<const std::vector<int64_t>*> ptrs(const std::vector<std::vector<int64_t>>& v) {
  std::vector<const std::vector<int64_t>*> p;
  for (const auto& x : v) p.push_back(&x);
  return p;
}

}  // namespace

TEST(DistModel, EqualCountsAreBalanced) {
  // Expert choice: every expert takes the same rows from every rank. 4 ranks x 2 experts each.
  const std::vector<std::vector<int64_t>> c(4, std::vector<int64_t>(8, 10));
  const auto r = ep_layer_cost(ptrs(c), 0);
  EXPECT_DOUBLE_EQ(r.max_rows, 2 * 4 * 10);
  EXPECT_DOUBLE_EQ(r.routed, 4 * 8 * 10);
  EXPECT_DOUBLE_EQ(r.straggler(), 1.0);
  EXPECT_DOUBLE_EQ(r.dropped, 0.0);
  EXPECT_DOUBLE_EQ(r.slowest_xfer, 6 * 10);  // 6 of 8 experts live elsewhere
  EXPECT_DOUBLE_EQ(r.sent, 4 * 6 * 10);
}

TEST(DistModel, SkewedCountsMakeAStraggler) {
  // Dropless token choice with every pair on expert 0: rank 0 does all the work.
  std::vector<std::vector<int64_t>> c(4, std::vector<int64_t>(8, 0));
  for (auto& x : c) x[0] = 100;
  const auto r = ep_layer_cost(ptrs(c), 0);
  EXPECT_DOUBLE_EQ(r.max_rows, 400);
  EXPECT_DOUBLE_EQ(r.straggler(), 4.0);
  EXPECT_DOUBLE_EQ(r.slowest_xfer, 300);  // rank 0 receives from the 3 others
  EXPECT_DOUBLE_EQ(r.sent, 300);
  // With a capacity of 30 slots per (rank, expert): every rank computes its padded slots, the rest drops.
  const auto k = ep_layer_cost(ptrs(c), 30);
  EXPECT_DOUBLE_EQ(k.max_rows, 2 * 4 * 30);
  EXPECT_DOUBLE_EQ(k.dropped, 4 * 70);
  EXPECT_DOUBLE_EQ(k.straggler(), 240.0 / 100.0);
  EXPECT_DOUBLE_EQ(k.slowest_xfer, 6 * 30);  // fixed sizes, padding included
}

TEST(DistModel, MoreRanksThanExpertsReplicate) {
  // E = 2, EP = 4: expert e on ranks 2e and 2e+1; rank r sends to replica r mod 2.
  std::vector<std::vector<int64_t>> c(4, std::vector<int64_t>{10, 30});
  const auto r = ep_layer_cost(ptrs(c), 0);
  EXPECT_DOUBLE_EQ(r.routed, 160);
  EXPECT_DOUBLE_EQ(r.max_rows, 2 * 30);  // a replica of expert 1 serves two sources
  EXPECT_DOUBLE_EQ(r.straggler(), 60.0 / 40.0);
  EXPECT_THROW(ep_layer_cost(ptrs(std::vector<std::vector<int64_t>>(3, std::vector<int64_t>(2, 1))), 0),
               std::invalid_argument);
}
