// The fused decoding attention (kernels/attention.h) against torch's path and an f64 reference:
// f32 and bf16, GQA, empty and non-empty caches of either dtype, 1-3 blocks per row, head_dim
// tails; a row alone equals the same row inside a batch bit for bit; the mask reader.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <limits>
#include <string>

#include "ecdlm/kernels/attention.h"
#include "ecdlm/kernels/small_m.h"
#include "ecdlm/kernels/softmax.h"

namespace ecdlm::kernels {
namespace {

torch::Tensor block_mask(int64_t q0, int64_t Lq, int64_t S, int64_t block) {
  auto qb = torch::div(torch::arange(q0, q0 + Lq, torch::kInt64), block, "floor").view({Lq, 1});
  auto kb = torch::div(torch::arange(0, S, torch::kInt64), block, "floor").view({1, S});
  return torch::zeros({Lq, S}).masked_fill(kb > qb, -std::numeric_limits<float>::infinity());
}

struct RowData {
  torch::Tensor k_cache, v_cache;  // [Hkv, P, hd] or undefined
  int64_t len;
};

// torch's decoding attention for one row (segment_attention's math), in the inputs' dtype, or in
// f64 when `f64` (the reference both paths are measured against).
torch::Tensor torch_row(const torch::Tensor& q_LHd, const torch::Tensor& k_LKd, const torch::Tensor& v_LKd,
                        const RowData& r, int64_t block, bool f64) {
  const auto dt = f64 ? torch::kFloat64 : q_LHd.scalar_type();
  const int64_t L = q_LHd.size(0), H = q_LHd.size(1), hd = q_LHd.size(2), Hkv = k_LKd.size(1), g = H / Hkv;
  auto q = q_LHd.to(dt).permute({1, 0, 2}).reshape({Hkv, g * L, hd});
  // A cache is rounded to the call's dtype first (as `.to()` does), then widened for f64.
  auto cache = [&](const torch::Tensor& c) { return c.to(q_LHd.scalar_type()).to(dt); };
  auto k = k_LKd.to(dt).permute({1, 0, 2}), v = v_LKd.to(dt).permute({1, 0, 2});
  if (r.k_cache.defined()) {
    k = torch::cat({cache(r.k_cache), k}, 1);
    v = torch::cat({cache(r.v_cache), v}, 1);
  }
  const int64_t S = k.size(1);
  auto s = (torch::matmul(q, k.transpose(1, 2)) * (1.0 / std::sqrt(double(hd))));
  s = (f64 ? s : s.to(torch::kFloat32)).view({Hkv, g, L, S}) + block_mask(S - L, L, S, block).to(f64 ? dt : torch::kFloat32);
  auto p = torch::softmax(s, -1).view({Hkv, g * L, S});
  auto out = torch::matmul(p.to(dt), v);  // [Hkv, g L, hd]
  return out.view({H, L, hd}).permute({1, 0, 2});
}

struct Case {
  int64_t H, Hkv, hd;
  torch::ScalarType dt, cache_dt;
  std::vector<int64_t> cached, lens;  // per row
};

class DecodeAttention : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    if (!__builtin_cpu_supports("avx512f")) GTEST_SKIP() << "no AVX512F";
  }
};

TEST_P(DecodeAttention, MatchesTorchAndF64AndRowsAreIndependent) {
  const auto c = GetParam();
  const int64_t block = 32;
  torch::manual_seed(7);
  torch::NoGradGuard ng;
  F32TilesScope scope;
  int64_t N = 0;
  std::vector<RowData> data;
  std::vector<AttnRow> rows;
  std::vector<int64_t> vis;
  for (size_t i = 0; i < c.lens.size(); ++i) {
    RowData d;
    d.len = c.lens[i];
    AttnRow r;
    r.row0 = N;
    r.len = d.len;
    if (c.cached[i] > 0) {
      d.k_cache = torch::randn({c.Hkv, c.cached[i], c.hd}).to(c.cache_dt);
      d.v_cache = torch::randn({c.Hkv, c.cached[i], c.hd}).to(c.cache_dt);
      r.k_HPd = d.k_cache;
      r.v_HPd = d.v_cache;
    }
    const auto v = block_causal_visible(c.cached[i], d.len, block);
    vis.insert(vis.end(), v.begin(), v.end());
    N += d.len;
    data.push_back(d);
    rows.push_back(r);
  }
  // Scores of a few units (randn q and k over hd dims, scaled by 1/sqrt(hd)) as in a real model.
  const auto q = torch::randn({N, c.H, c.hd}).to(c.dt), k = torch::randn({N, c.Hkv, c.hd}).to(c.dt),
             v = torch::randn({N, c.Hkv, c.hd}).to(c.dt);
  ASSERT_TRUE(decode_attention_applies(q, k, v, rows, vis));
  const auto out = decode_attention(q, k, v, rows, vis, 1.0 / std::sqrt(double(c.hd)));
  ASSERT_EQ(out.sizes(), q.sizes());
  ASSERT_EQ(out.scalar_type(), c.dt);
  for (size_t i = 0; i < rows.size(); ++i) {
    const auto& r = rows[i];
    const auto qi = q.narrow(0, r.row0, r.len), ki = k.narrow(0, r.row0, r.len), vi = v.narrow(0, r.row0, r.len);
    const auto ref = torch_row(qi, ki, vi, data[i], block, true);
    const auto tor = torch_row(qi, ki, vi, data[i], block, false);
    const auto mine = out.narrow(0, r.row0, r.len);
    const double e_mine = (mine.to(torch::kFloat64) - ref).abs().max().item<double>();
    const double e_torch = (tor.to(torch::kFloat64) - ref).abs().max().item<double>();
    if (c.dt == torch::kFloat32) {
      EXPECT_LT(e_mine, 2e-5) << "row " << i << " (torch's f32 path: " << e_torch << ")";
    } else {
      // bf16: the output's rounding dominates; no worse than torch's bf16 path (which also rounds
      // the scores and probabilities to bf16).
      EXPECT_LE(e_mine, std::max(e_torch, 1e-2)) << "row " << i;
    }
    // The same row alone: the same bits.
    AttnRow alone = r;
    alone.row0 = 0;
    const std::vector<int64_t> vis_i(vis.begin() + r.row0, vis.begin() + r.row0 + r.len);
    const auto out_i = decode_attention(qi.contiguous(), ki.contiguous(), vi.contiguous(), {alone}, vis_i,
                                        1.0 / std::sqrt(double(c.hd)));
    EXPECT_TRUE(torch::equal(out_i, mine)) << "row " << i << " differs alone and in the batch";
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, DecodeAttention,
    ::testing::Values(
        // MHA f32, the Brown model's shape: one empty cache, one of 2 blocks, one of 3 (1-3 blocks per row).
        Case{4, 4, 64, torch::kFloat32, torch::kFloat32, {0, 64, 96}, {32, 64, 32}},
        // GQA (2 query heads per K/V head), head_dim with a 16-lane tail, and > 64 (two d tiles).
        Case{4, 2, 20, torch::kFloat32, torch::kFloat32, {32, 0}, {32, 96}},
        Case{8, 2, 80, torch::kFloat32, torch::kFloat32, {128, 32, 0}, {32, 32, 64}},
        // A cache of another dtype: bf16 cache read by f32, f32 cache read by bf16 (rounded first).
        Case{4, 2, 64, torch::kFloat32, torch::kBFloat16, {64, 32}, {32, 64}},
        Case{4, 1, 64, torch::kBFloat16, torch::kFloat32, {64, 0}, {64, 32}},
        Case{16, 4, 128, torch::kBFloat16, torch::kBFloat16, {0, 160, 32}, {96, 32, 32}},
        // One row with one query head per K/V head and head_dim 8 (tiny models).
        Case{2, 2, 8, torch::kFloat32, torch::kFloat32, {32}, {32}}),
    // Readable ctest names: H8_Hkv2_hd80_f32_cache_f32_rows3.
    [](const ::testing::TestParamInfo<Case>& i) {
      const auto& c = i.param;
      auto dt = [](torch::ScalarType t) { return std::string(t == torch::kFloat32 ? "f32" : "bf16"); };
      return "H" + std::to_string(c.H) + "_Hkv" + std::to_string(c.Hkv) + "_hd" + std::to_string(c.hd) + "_" +
             dt(c.dt) + "_cache_" + dt(c.cache_dt) + "_rows" + std::to_string(c.lens.size());
    });

TEST(DecodeAttentionMask, VisiblePrefixFromMask) {
  for (int64_t p0 : {0, 32, 64})
    for (int64_t L : {32, 64, 96}) {
      std::vector<int64_t> vis;
      ASSERT_TRUE(visible_from_mask(block_mask(p0, L, p0 + L, 32), L, p0 + L, vis));
      EXPECT_EQ(vis, block_causal_visible(p0, L, 32));
    }
  std::vector<int64_t> vis;
  ASSERT_TRUE(visible_from_mask(torch::Tensor(), 3, 10, vis));
  EXPECT_EQ(vis, std::vector<int64_t>(3, 10));
  EXPECT_EQ(block_causal_visible(5, 3, 0), std::vector<int64_t>(3, 8));  // bidirectional
  // Masks that are not a visible prefix per row keep torch's path.
  auto hole = torch::zeros({2, 4});
  hole[0][1] = -std::numeric_limits<float>::infinity();
  EXPECT_FALSE(visible_from_mask(hole, 2, 4, vis));
  EXPECT_FALSE(visible_from_mask(torch::full({2, 4}, 0.5F), 2, 4, vis));
  EXPECT_FALSE(visible_from_mask(torch::full({2, 4}, -std::numeric_limits<float>::infinity()), 2, 4, vis));
}

TEST(DecodeAttentionMask, OnlyInsideTheDecoderScope) {
  torch::NoGradGuard ng;
  const auto q = torch::randn({32, 2, 16}), k = torch::randn({32, 2, 16});
  AttnRow r;
  r.len = 32;
  const auto vis = block_causal_visible(0, 32, 32);
  EXPECT_FALSE(decode_attention_applies(q, k, k, {r}, vis));  // no F32TilesScope: torch's path
  if (!__builtin_cpu_supports("avx512f")) GTEST_SKIP() << "no AVX512F";
  F32TilesScope scope;
  EXPECT_TRUE(decode_attention_applies(q, k, k, {r}, vis));
  set_small_m(SmallM::kTorch);  // `--kernel torch` turns it off
  EXPECT_FALSE(decode_attention_applies(q, k, k, {r}, vis));
  set_small_m(SmallM::kAuto);
  auto bad = vis;
  bad[3] = 33;  // more keys than the row has
  EXPECT_FALSE(decode_attention_applies(q, k, k, {r}, bad));
  EXPECT_FALSE(decode_attention_applies(q.to(torch::kFloat64), k.to(torch::kFloat64), k.to(torch::kFloat64), {r}, vis));
}

}  // namespace
}  // namespace ecdlm::kernels

// The greedy pick of the threshold decoders (kernels/softmax.h): the token torch's argmax picks and
// its softmax probability, per row independent of the others.
namespace ecdlm::kernels {
namespace {

TEST(GreedyProb, MatchesSoftmaxArgmaxAndRowsAreIndependent) {
  if (!__builtin_cpu_supports("avx512f")) GTEST_SKIP() << "no AVX512F";
  torch::manual_seed(3);
  torch::NoGradGuard ng;
  EXPECT_FALSE(greedy_prob_applies(torch::randn({2, 8})));  // outside the decoders: torch's path
  F32TilesScope scope;
  for (int64_t V : {1, 7, 16, 100, 8192}) {
    auto l = torch::randn({37, V}) * 4.0;
    l[5].fill_(1.5);                     // ties: the first index wins, as argmax
    if (V > 3) l[6][V - 1] = 1e3;        // the max in the tail
    ASSERT_TRUE(greedy_prob_applies(l));
    torch::Tensor tok, prob;
    greedy_prob(l, tok, prob);
    const auto p = torch::softmax(l.to(torch::kFloat64), -1);
    EXPECT_TRUE(torch::equal(tok, l.argmax(-1))) << "V " << V;
    const auto ref = p.gather(1, tok.unsqueeze(1)).squeeze(1);
    EXPECT_LT(((prob - ref) / ref).abs().max().item<double>(), 2e-6) << "V " << V;
    torch::Tensor tok1, prob1;
    greedy_prob(l.narrow(0, 9, 1).contiguous(), tok1, prob1);
    EXPECT_EQ(tok1.item<int64_t>(), tok[9].item<int64_t>());
    EXPECT_EQ(prob1.item<double>(), prob[9].item<double>());
  }
}

}  // namespace
}  // namespace ecdlm::kernels
