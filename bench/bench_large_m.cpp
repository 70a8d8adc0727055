// The bf16 products of a batched serving step at LLaDA2.0-mini's shapes, in GFLOP/s against one
// large bf16 GEMM (torch / oneDNN, the peak) measured in the same run. An 8-row step forwards
// about 220 token rows: the projections, dense MLP and LM head see M ~ 220, a routed expert
// 16-128 of them (top-8 of 256 experts).
// Run: build/ecdlm_microbench --benchmark_filter='BigGemmPeak|ExpertGemm|ManyRowsMoe|Bf16Linear'
#include <benchmark/benchmark.h>
#include <omp.h>
#include <torch/torch.h>

#include <algorithm>
#include <string>

#include "ecdlm/bench/generate_bench.h"
#include "ecdlm/kernels/backend.h"
#include "ecdlm/kernels/small_m.h"
#include "ecdlm/model/config.h"
#include "ecdlm/moe/moe_block.h"

using namespace ecdlm;

namespace {

void set_gflops(benchmark::State& state, double flop_per_iter) {
  state.counters["GFLOP/s"] =
      benchmark::Counter(flop_per_iter * static_cast<double>(state.iterations()) / 1e9, benchmark::Counter::kIsRate);
}

// The bf16 GEMM peak: [512, 2048] x [2048, 2048]^T through torch's linear (oneDNN). args: threads
void BM_BigGemmPeak(benchmark::State& state) {  // args: threads
  torch::set_num_threads(static_cast<int>(state.range(0)));
  torch::NoGradGuard ng;
  const int64_t M = 512, K = 2048, N = 2048;
  auto x = torch::randn({M, K}).to(torch::kBFloat16), w = torch::randn({N, K}).to(torch::kBFloat16);
  for (auto _ : state) benchmark::DoNotOptimize(torch::nn::functional::linear(x, w).data_ptr());
  set_gflops(state, 2.0 * M * K * N);
}
BENCHMARK(BM_BigGemmPeak)->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();

enum Impl : int { kTorchLinear = 0, kDotTiles = 1 };

// One product x [M, K] . w [N, K]^T. args: impl, K, N, M, threads. kDotTiles is the small-M
// AVX512-BF16 loop (detail::avx512_rows) at any M, 64 weight rows a parallel unit.
void BM_ExpertGemm(benchmark::State& state) {
  const int threads = static_cast<int>(state.range(4));
  torch::set_num_threads(threads);
  torch::NoGradGuard ng;
  const auto impl = static_cast<Impl>(state.range(0));
  const int64_t K = state.range(1), N = state.range(2), M = state.range(3);
  // Several weights so they come from memory as an expert's do (each expert is read once a layer).
  std::vector<torch::Tensor> ws;
  const int64_t copies = std::max<int64_t>(2, std::min<int64_t>(16, (int64_t{64} << 20) / (N * K * 2)));
  for (int64_t c = 0; c < copies; ++c) ws.push_back(torch::randn({N, K}).mul_(0.05).to(torch::kBFloat16));
  auto x = torch::randn({M, K}).to(torch::kBFloat16);
  auto y = torch::empty({M, N}, torch::kFloat32);
  size_t i = 0;
  for (auto _ : state) {
    const auto& w = ws[i++ % ws.size()];
    if (impl == kTorchLinear) {
      benchmark::DoNotOptimize(torch::nn::functional::linear(x, w).data_ptr());
    } else {
      const auto* xb = reinterpret_cast<const uint16_t*>(x.data_ptr());
      const auto* wb = reinterpret_cast<const uint16_t*>(w.data_ptr());
      float* yb = y.data_ptr<float>();
      const int64_t units = (N + 63) / 64;
#pragma omp parallel for schedule(static) num_threads(threads)
      for (int64_t u = 0; u < units; ++u)
        kernels::detail::avx512_rows(xb, M, K, wb, u * 64, std::min(N, (u + 1) * 64), yb + u * 64, N);
    }
  }
  set_gflops(state, 2.0 * M * K * N);
  state.SetLabel(impl == kTorchLinear ? "torch linear" : "dot tiles");
}
BENCHMARK(BM_ExpertGemm)
    ->ArgsProduct({{kTorchLinear, kDotTiles}, {2048}, {512}, {16, 32, 64, 128}, {1, 2}})
    ->ArgsProduct({{kTorchLinear, kDotTiles}, {512}, {2048}, {16, 32, 64, 128}, {1, 2}})
    // The dense products at ~220 rows: QKV, dense gate/up, dense down, LM head.
    ->ArgsProduct({{kTorchLinear, kDotTiles}, {2048}, {3072, 5120, 32768}, {224}, {1, 2}})
    ->ArgsProduct({{kTorchLinear, kDotTiles}, {5120}, {2048}, {224}, {1, 2}})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();

// The routed experts of one MoE layer of a batched step: rows x 32 token rows routed by
// LLaDA2.0-mini's router (synthetic popularity bias, as bench generate) on random inputs, the
// pairs sorted by expert; times Experts::forward_sorted alone (no routing, gather or combine),
// three layers so the experts come from memory. args: rows, path:
//   0 forward_sorted as it is (grouped kernel: all experts in one parallel region),
//   1 the one-expert-at-a-time loop forward_sorted used whenever an expert had > 16 rows
//     (forward_one per expert, torch's GEMMs above 16 rows, then one cat),
//   2 forward_sorted with --kernel torch;
// threads (1 gives steadier numbers on a shared machine).
void BM_ManyRowsMoe(benchmark::State& state) {
  torch::set_num_threads(static_cast<int>(state.range(2)));
  torch::NoGradGuard ng;
  const int64_t rows = state.range(0), path = state.range(1);
  const auto c = moe_config_from(bench::synthetic_llada2_config(1, 32768));
  static std::vector<moe::MoeBlock> blocks;
  if (blocks.empty()) {
    torch::manual_seed(0);
    for (int i = 0; i < 3; ++i) {
      moe::MoeBlock b(c);
      bench::init_synthetic_router(*b);
      b->experts->to(torch::kBFloat16);
      b->eval();
      blocks.push_back(b);
    }
  }
  struct Sorted {
    torch::Tensor x_PD;
    std::vector<int64_t> counts_E;
  };
  std::vector<Sorted> in;
  double unique = 0, max_rows = 0;
  torch::manual_seed(rows);  // the same tokens (and routing) for every path
  for (auto& b : blocks) {
    auto x = torch::randn({1, rows * 32, 2048}).to(torch::kBFloat16);
    auto plan = b->route(x, moe::MoeForwardArgs{});
    auto flat = plan.idx_TK.reshape({-1});
    auto order = std::get<1>(torch::sort(flat, /*stable=*/true, 0, false));
    auto counts = torch::bincount(flat, {}, c.num_experts).contiguous();
    const int64_t* cnt = counts.data_ptr<int64_t>();
    in.push_back({x.view({-1, 2048}).index_select(0, torch::div(order, c.num_experts_per_tok, "floor")).contiguous(),
                  std::vector<int64_t>(cnt, cnt + c.num_experts)});
    for (auto n : in.back().counts_E) {
      unique += n > 0;
      max_rows = std::max(max_rows, static_cast<double>(n));
    }
  }
  const auto prev = kernels::small_m_choice();
  kernels::set_small_m(path == 2 ? kernels::SmallM::kTorch : kernels::SmallM::kAuto);
  auto run = [&](size_t i) {
    auto& ex = blocks[i]->experts;
    if (path != 1) return ex->forward_sorted(in[i].x_PD, in[i].counts_E);
    std::vector<torch::Tensor> outs;
    int64_t off = 0;
    for (int64_t e = 0; e < c.num_experts; ++e) {
      const int64_t n = in[i].counts_E[size_t(e)];
      if (n == 0) continue;
      outs.push_back(ex->forward_one(e, in[i].x_PD.narrow(0, off, n)));
      off += n;
    }
    return torch::cat(outs, 0);
  };
  for (size_t i = 0; i < blocks.size(); ++i) run(i);  // warm
  for (auto _ : state)
    for (size_t i = 0; i < blocks.size(); ++i) benchmark::DoNotOptimize(run(i).data_ptr());
  kernels::set_small_m(prev);
  // pairs x 3 products x 2 D F flop, three layers
  set_gflops(state, 3.0 * static_cast<double>(rows * 32 * c.num_experts_per_tok) * 3 * 2 * 2048 * 512);
  state.counters["experts"] = unique / 3;
  state.counters["max_rows"] = max_rows;
  state.SetLabel(path == 0 ? "grouped" : path == 1 ? "one expert at a time" : "kernel torch");
}
BENCHMARK(BM_ManyRowsMoe)->ArgsProduct({{1, 4, 7, 14}, {0, 1, 2}, {1, 2}})->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace
