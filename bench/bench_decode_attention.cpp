// The decoders' fused attention (kernels/attention.h) against torch's per-row path (cat of the
// cache, matmul, additive block-causal mask, softmax, matmul: what segment_attention did), side by
// side in one run. Rows of one 32-token block each, after caches of 64-160 positions (bench serve's
// requests mid-way), at 1 and 8 rows. Shapes: the Brown TC model (4 heads of 64, f32) and
// LLaDA2.0-mini (16 query heads, 4 K/V heads of 128, bf16).
// Run: build/ecdlm_microbench --benchmark_filter=DecodeAttention
#include <benchmark/benchmark.h>
#include <torch/torch.h>

#include <cmath>
#include <limits>

#include "ecdlm/kernels/attention.h"
#include "ecdlm/kernels/small_m.h"

namespace {

struct Rows {
  torch::Tensor q, k, v;                   // [N, H, hd], [N, Hkv, hd]
  std::vector<torch::Tensor> kc, vc;       // [Hkv, P, hd]
  std::vector<ecdlm::kernels::AttnRow> rows;
  std::vector<int64_t> vis;
  std::vector<torch::Tensor> masks;        // [L, P + L]
};

Rows make_rows(int64_t n_rows, int64_t H, int64_t Hkv, int64_t hd, torch::ScalarType dt) {
  constexpr int64_t L = 32;
  Rows r;
  const int64_t N = n_rows * L;
  r.q = torch::randn({N, H, hd}).to(dt);
  r.k = torch::randn({N, Hkv, hd}).to(dt);
  r.v = torch::randn({N, Hkv, hd}).to(dt);
  for (int64_t i = 0; i < n_rows; ++i) {
    const int64_t P = 64 + 32 * (i % 4);
    r.kc.push_back(torch::randn({Hkv, P, hd}).to(dt));
    r.vc.push_back(torch::randn({Hkv, P, hd}).to(dt));
    ecdlm::kernels::AttnRow a;
    a.row0 = i * L;
    a.len = L;
    a.k_HPd = r.kc.back();
    a.v_HPd = r.vc.back();
    r.rows.push_back(a);
    const auto v = ecdlm::kernels::block_causal_visible(P, L, L);
    r.vis.insert(r.vis.end(), v.begin(), v.end());
    auto qb = torch::div(torch::arange(P, P + L, torch::kInt64), L, "floor").view({L, 1});
    auto kb = torch::div(torch::arange(0, P + L, torch::kInt64), L, "floor").view({1, P + L});
    r.masks.push_back(torch::zeros({L, P + L}).masked_fill(kb > qb, -std::numeric_limits<float>::infinity()));
  }
  return r;
}

// args: rows, shape (0 Brown f32, 1 LLaDA2 bf16), path (0 torch, 1 kernel)
void BM_DecodeAttention(benchmark::State& state) {
  const bool llada = state.range(1) == 1, fused = state.range(2) == 1;
  const int64_t H = llada ? 16 : 4, Hkv = 4, hd = llada ? 128 : 64, g = H / Hkv;
  torch::manual_seed(1);
  torch::NoGradGuard ng;
  ecdlm::kernels::F32TilesScope scope;
  auto r = make_rows(state.range(0), H, Hkv, hd, llada ? torch::kBFloat16 : torch::kFloat32);
  if (fused && !ecdlm::kernels::decode_attention_applies(r.q, r.k, r.v, r.rows, r.vis)) {
    state.SkipWithError("the fused kernel does not apply on this CPU");
    return;
  }
  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
  for (auto _ : state) {
    if (fused) {
      benchmark::DoNotOptimize(ecdlm::kernels::decode_attention(r.q, r.k, r.v, r.rows, r.vis, scale));
      continue;
    }
    std::vector<torch::Tensor> outs;
    for (size_t i = 0; i < r.rows.size(); ++i) {
      const int64_t L = r.rows[i].len;
      auto q = r.q.narrow(0, r.rows[i].row0, L).unsqueeze(0).transpose(1, 2);
      auto kn = r.k.narrow(0, r.rows[i].row0, L).unsqueeze(0).transpose(1, 2);
      auto vn = r.v.narrow(0, r.rows[i].row0, L).unsqueeze(0).transpose(1, 2);
      auto k = torch::cat({r.kc[i].unsqueeze(0), kn}, 2), v = torch::cat({r.vc[i].unsqueeze(0), vn}, 2);
      const int64_t S = k.size(2);
      auto s = (torch::matmul(q.reshape({1, Hkv, g * L, hd}), k.transpose(-1, -2)) * scale).to(torch::kFloat32);
      s = s.view({1, Hkv, g, L, S}) + r.masks[i].view({1, 1, 1, L, S});
      auto p = torch::softmax(s, -1);
      auto o = torch::matmul(p.view({1, Hkv, g * L, S}).to(v.scalar_type()), v);
      outs.push_back(o.view({1, H, L, hd}).transpose(1, 2).reshape({1, L, H * hd}));
    }
    benchmark::DoNotOptimize(torch::cat(outs, 1));
  }
}

BENCHMARK(BM_DecodeAttention)->ArgsProduct({{1, 8}, {0, 1}, {0, 1}})->Unit(benchmark::kMicrosecond);

}  // namespace
