// The MoE part of a KV-cached decoding step on LLaDA2.0-mini's expert shapes (256 experts of
// 512 x 2048, bf16): a 32-token block routed top-8 touches about 60 experts per layer with about
// 4 tokens each, so the step streams about 370 MB of expert weights per layer and its speed is
// the memory bandwidth it reaches (counter GB/s). Three layers' experts (4.6 GB) so nothing
// stays in cache. Also one projection at 1 to 128 token rows per backend (BM_SmallMLinear).
// Run: build/ecdlm_microbench --benchmark_filter='ExpertStream|SmallMLinear'
#include <benchmark/benchmark.h>
#include <torch/torch.h>

#include <map>
#include <utility>

#include "ecdlm/io/quant_format.h"
#include "ecdlm/kernels/head.h"
#include "ecdlm/kernels/quant.h"
#include "ecdlm/kernels/quant_backend.h"
#include "ecdlm/kernels/quant_repack.h"
#include "ecdlm/kernels/small_m.h"
#include "ecdlm/moe/experts.h"
#include "ecdlm/util/huge_pages.h"

using namespace ecdlm;

namespace {

constexpr int64_t kE = 256, kD = 2048, kF = 512, kLayers = 3, kTokens = 32, kTopK = 8;

struct Layers {
  std::vector<moe::Experts> experts;
  std::vector<torch::Tensor> x_TD, idx_TK, gate_TK;
};

// Random experts and a fixed routing per layer: 32 tokens, top-8 drawn from 64 popular experts
// of each layer (about 60 distinct, the measured count on the synthetic LLaDA2 model). Two
// copies, built on first use: weights on 4 KB pages and on 2 MB huge pages, same values.
Layers make_layers(bool huge) {
  const bool was = huge_pages::enabled();
  huge_pages::install();
  huge_pages::set_enabled(huge);
  Layers l;
  torch::NoGradGuard ng;
  torch::manual_seed(0);
  for (int64_t i = 0; i < kLayers; ++i) {
    moe::Experts ex(kE, kD, kF);
    ex->to(torch::kBFloat16);
    l.experts.push_back(ex);
    l.x_TD.push_back(torch::randn({kTokens, kD}).to(torch::kBFloat16));
    auto popular = torch::randperm(kE, torch::kInt64).narrow(0, 0, 64);
    auto pick = std::get<1>(torch::rand({kTokens, 64}).topk(kTopK, 1));
    l.idx_TK.push_back(popular.index_select(0, pick.reshape({-1})).view({kTokens, kTopK}));
    l.gate_TK.push_back(torch::rand({kTokens, kTopK}));
  }
  huge_pages::set_enabled(was);
  return l;
}

Layers& layers(bool huge) {
  if (huge) {
    static Layers on_huge = make_layers(true);
    return on_huge;
  }
  static Layers on_small = make_layers(false);
  return on_small;
}

void BM_ExpertStream(benchmark::State& state) {
  torch::set_num_threads(static_cast<int>(state.range(0)));
  const auto kernel = static_cast<kernels::SmallM>(state.range(1));
  if ((kernel == kernels::SmallM::kAmx && !kernels::cpu_has_amx_bf16()) ||
      (kernel == kernels::SmallM::kAvx512 && !kernels::cpu_has_avx512_bf16())) {
    state.SkipWithError("backend not available on this CPU");
    return;
  }
  kernels::set_small_m(kernel);
  torch::NoGradGuard ng;
  auto& l = layers(state.range(2) != 0);
  double bytes = 0;
  for (int64_t i = 0; i < kLayers; ++i) {
    const auto unique = std::get<0>(torch::_unique(l.idx_TK[static_cast<size_t>(i)])).numel();
    bytes += static_cast<double>(unique) * static_cast<double>(l.experts[static_cast<size_t>(i)]->bytes_per_expert());
  }
  for (auto _ : state) {
    for (int64_t i = 0; i < kLayers; ++i) {
      const auto s = static_cast<size_t>(i);
      auto y = moe::run_token_major(l.x_TD[s], l.idx_TK[s], l.gate_TK[s], l.experts[s]);
      benchmark::DoNotOptimize(y.data_ptr());
    }
  }
  state.counters["GB/s"] = benchmark::Counter(bytes * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.SetLabel(std::string(kernels::small_m_name(kernel)) + " " + std::to_string(state.range(0)) + " thread(s), " +
                 (state.range(2) ? "2 MB" : "4 KB") + " pages");
  kernels::set_small_m(kernels::SmallM::kAuto);
}

// args: threads, kernel (kernels::SmallM: 1 amx, 2 avx512, 3 torch), huge pages (0/1)
BENCHMARK(BM_ExpertStream)->ArgsProduct({{1, 2}, {1, 2, 3}, {0, 1}})->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace

namespace {

// One bf16 projection [M, 2048] x [N, 2048]^T over 48 weight matrices (N = 2048 and 5120: 0.4 and
// 1 GB, so the weights stream from memory) for the small-M backends and torch (oneDNN), to place
// the row limits (kernels/small_m.h). args: M, N, kernel (kernels::SmallM 1 amx, 2 avx512, 3 torch)
void BM_SmallMLinear(benchmark::State& state) {
  torch::set_num_threads(2);
  const int64_t M = state.range(0), N = state.range(1), K = 2048;
  const auto kernel = static_cast<kernels::SmallM>(state.range(2));
  if ((kernel == kernels::SmallM::kAmx && !kernels::cpu_has_amx_bf16()) ||
      (kernel == kernels::SmallM::kAvx512 && !kernels::cpu_has_avx512_bf16())) {
    state.SkipWithError("backend not available on this CPU");
    return;
  }
  torch::NoGradGuard ng;
  static std::map<int64_t, std::vector<torch::Tensor>> weights;
  auto& w = weights[N];
  if (w.empty())
    for (int i = 0; i < 48; ++i) w.push_back(torch::randn({N, K}).to(torch::kBFloat16));
  auto x = torch::randn({M, K}).to(torch::kBFloat16);
  kernels::set_small_m(kernel);
  const bool ours = kernel != kernels::SmallM::kTorch && kernels::small_m_applies(x, w[0]);
  if (kernel != kernels::SmallM::kTorch && !ours) {
    state.SkipWithError("more rows than the backend takes");
    kernels::set_small_m(kernels::SmallM::kAuto);
    return;
  }
  for (auto _ : state)
    for (const auto& wi : w) {
      auto y = ours ? kernels::small_m_linear(x, wi) : torch::nn::functional::linear(x, wi);
      benchmark::DoNotOptimize(y.data_ptr());
    }
  state.counters["GB/s"] = benchmark::Counter(48.0 * static_cast<double>(N * K * 2) * 1e-9,
                                              benchmark::Counter::kIsIterationInvariantRate);
  state.SetLabel(kernels::small_m_name(kernel));
  kernels::set_small_m(kernels::SmallM::kAuto);
}

BENCHMARK(BM_SmallMLinear)
    ->ArgsProduct({{1, 4, 16, 32, 64, 128}, {2048, 5120}, {1, 2, 3}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// The LM head of a cached step: [M, 2048] masked rows x LLaDA2's [157184, 2048] head (644 MB in
// bf16, streamed from memory), two threads: bf16 through kernels::head_linear, or packed as
// `convert --quantize-lm-head` packs it (q8 / q4, groups of 32) through quant_linear on its
// output-lane copies, as the readers run it. Counters: GB/s of weight bytes and GFLOP/s (2 M N K).
// args: M (a block's masked rows: 32 down to 1 as it fills), N, format (0 bf16, 1 q8, 2 q4).
void BM_HeadLinear(benchmark::State& state) {
  const int fmt = static_cast<int>(state.range(2));
  if (fmt == 0 && !kernels::cpu_has_avx512_bf16()) {
    state.SkipWithError("head_linear needs AVX512-BF16");
    return;
  }
  if (fmt > 0 && !kernels::cpu_has_avx512_vnni()) {
    state.SkipWithError("the output-lane copies need AVX512-VNNI");
    return;
  }
  torch::set_num_threads(2);
  torch::NoGradGuard ng;
  const int64_t M = state.range(0), N = state.range(1), K = 2048;
  static std::map<int64_t, torch::Tensor> ws;
  static std::map<std::pair<int64_t, int>, io::QuantWeight> qs;
  auto& w = ws[N];
  if (!w.defined()) w = torch::randn({N, K}).to(torch::kBFloat16);
  const auto x = torch::randn({M, K}).to(torch::kBFloat16);
  double bytes = static_cast<double>(N * K * 2);
  if (fmt == 0) {
    for (auto _ : state) benchmark::DoNotOptimize(kernels::head_linear(x, w).data_ptr());
  } else {
    auto& q = qs[{N, fmt}];
    if (!q.qweight.defined()) q = io::quantize(w.to(torch::kFloat32), {fmt == 1 ? io::QuantKind::kQ8 : io::QuantKind::kQ4, 32});
    kernels::set_quant_repack(true);
    (void)kernels::prepack_quant({&q});
    bytes = static_cast<double>(kernels::detail::packed_bytes(q));
    for (auto _ : state) benchmark::DoNotOptimize(kernels::quant_linear(x, q).data_ptr());
    kernels::set_quant_repack(false);
  }
  state.counters["GB/s"] = benchmark::Counter(bytes * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["GFLOP/s"] =
      benchmark::Counter(2.0 * static_cast<double>(M * N * K) * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.SetLabel(fmt == 0 ? "bf16" : fmt == 1 ? "q8 copies" : "q4 copies");
}

BENCHMARK(BM_HeadLinear)
    ->ArgsProduct({{1, 4, 8, 16, 24, 32}, {157184}, {0, 1, 2}})
    ->ArgsProduct({{16, 32}, {2048}, {0, 1, 2}})  // 2-8 MB: from the L3, the kernel's compute speed
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace
