// Quantized weights against bf16 on LLaDA2.0-mini's expert shapes (gate/up [512, 2048], down
// [2048, 512]): 64 experts (384 MB in bf16) so the weights stream from memory, each SwiGLU expert
// run on M token rows. Counters: GB/s of weight bytes streamed, ms per expert. Also one projection
// at 1..64 rows per path, to place the int8 kernels' row limit (kernels/quant.cpp kMaxRows).
// Run: build/ecdlm_microbench --benchmark_filter='Quant' --benchmark_repetitions=1
#include <benchmark/benchmark.h>
#include <immintrin.h>
#include <torch/torch.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <functional>
#include <iterator>
#include <map>
#include <optional>

#include "ecdlm/io/quant_format.h"
#include "ecdlm/kernels/quant.h"
#include "ecdlm/kernels/quant_repack.h"
#include "ecdlm/kernels/quant_backend.h"
#include "ecdlm/kernels/small_m.h"

using namespace ecdlm;

namespace {

constexpr int64_t kExperts = 64, kD = 2048, kF = 512;

// Formats by bench argument: 0 bf16, then the quantized ones.
const std::vector<io::QuantFormat> kFormats = {{io::QuantKind::kQ8, 32},    {io::QuantKind::kQ8, 64},
                                               {io::QuantKind::kQ4, 32},    {io::QuantKind::kQ4, 64},
                                               {io::QuantKind::kQ4Sym, 32}, {io::QuantKind::kQ4Sym, 64}};

struct Expert {
  torch::Tensor gate, up, down;  // bf16
  io::QuantWeight qgate, qup, qdown;
};

// The same random experts in bf16 and in format `fmt` (-1: bf16 only); built once per format.
std::vector<Expert>& experts(int fmt) {
  static std::map<int, std::vector<Expert>> cache;
  auto& e = cache[fmt];
  if (!e.empty()) return e;
  torch::manual_seed(0);
  torch::NoGradGuard ng;
  for (int64_t i = 0; i < kExperts; ++i) {
    Expert x;
    auto g = torch::randn({kF, kD}) * 0.02, u = torch::randn({kF, kD}) * 0.02, d = torch::randn({kD, kF}) * 0.02;
    if (fmt < 0) {
      x.gate = g.to(torch::kBFloat16);
      x.up = u.to(torch::kBFloat16);
      x.down = d.to(torch::kBFloat16);
    } else {
      const auto f = kFormats[static_cast<size_t>(fmt)];
      x.qgate = io::quantize(g, f);
      x.qup = io::quantize(u, f);
      x.qdown = io::quantize(d, f);
    }
    e.push_back(std::move(x));
  }
  return e;
}

// Pointers to experts(fmt)'s quantized projections, as kernels::quant_moe takes them.
kernels::QuantExperts quant_experts(int fmt) {
  kernels::QuantExperts q;
  for (const auto& e : experts(fmt)) {
    q.gate.push_back(&e.qgate);
    q.up.push_back(&e.qup);
    q.down.push_back(&e.qdown);
  }
  return q;
}

// args: format (0 bf16, 1 + index into kFormats), M, threads
void BM_QuantExpert(benchmark::State& state) {
  const int fmt = static_cast<int>(state.range(0)) - 1;
  const int64_t M = state.range(1);
  torch::set_num_threads(static_cast<int>(state.range(2)));
  torch::NoGradGuard ng;
  auto& ex = experts(fmt);
  const auto x = torch::randn({M, kD}).to(torch::kBFloat16);
  const double bytes = fmt < 0 ? 3.0 * kD * kF * 2 : 3.0 * static_cast<double>(ex[0].qgate.bytes());
  for (auto _ : state)
    for (const auto& e : ex) {
      auto y = fmt < 0 ? kernels::swiglu(x, e.gate, e.up, e.down) : kernels::quant_swiglu(x, e.qgate, e.qup, e.qdown);
      benchmark::DoNotOptimize(y.data_ptr());
    }
  state.counters["GB/s"] = benchmark::Counter(bytes * kExperts * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  // time / (experts x iterations), in ms
  state.counters["ms/expert"] = benchmark::Counter(kExperts * 1e-3, benchmark::Counter::kIsIterationInvariantRate |
                                                                        benchmark::Counter::kInvert);
  state.SetLabel((fmt < 0 ? std::string("bf16 ") + kernels::small_m_name(kernels::small_m_backend())
                          : io::quant_format_name(kFormats[static_cast<size_t>(fmt)]) + " " +
                                kernels::quant_kernel_name(kernels::quant_kernel_backend())) +
                 " M " + std::to_string(M));
}

BENCHMARK(BM_QuantExpert)
    ->ArgsProduct({{0, 1, 2, 3, 4, 5, 6}, {1, 4, 16}, {1}})
    ->Unit(benchmark::kMillisecond);  // one thread, CPU time: steadier than wall time on a shared machine
BENCHMARK(BM_QuantExpert)
    ->ArgsProduct({{0, 1, 3}, {1, 4, 16}, {2}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// All 64 experts in one call, M rows each (a cached step's MoE layer): kernels::quant_moe against
// the bf16 kernels::small_m_moe. args: format (as BM_QuantExpert), M, threads, repacked copies (1:
// the decoders' default on AVX512-VNNI, 0: the row layout).
void BM_QuantMoe(benchmark::State& state) {
  const int fmt = static_cast<int>(state.range(0)) - 1;
  const int64_t M = state.range(1);
  torch::set_num_threads(static_cast<int>(state.range(2)));
  torch::NoGradGuard ng;
  auto& ex = experts(fmt);
  const auto x = torch::randn({M * kExperts, kD}).to(torch::kBFloat16);
  const std::vector<int64_t> counts(kExperts, M);
  const bool repack = state.range(3) == 1;
  std::vector<torch::Tensor> g, u, d;
  for (const auto& e : ex) {
    g.push_back(e.gate);
    u.push_back(e.up);
    d.push_back(e.down);
  }
  const auto q = fmt < 0 ? kernels::QuantExperts{} : quant_experts(fmt);
  if (fmt < 0 && !kernels::small_m_moe_applies(x, counts, g, u, d)) {
    state.SkipWithError("no bf16 small-M kernel on this CPU for these rows");
    return;
  }
  const double bytes = fmt < 0 ? 3.0 * kD * kF * 2 : 3.0 * static_cast<double>(ex[0].qgate.bytes());
  kernels::set_quant_repack(repack);
  for (auto _ : state) {
    auto y = fmt < 0 ? kernels::small_m_moe(x, counts, g, u, d) : kernels::quant_moe(x, counts, q, torch::kBFloat16);
    benchmark::DoNotOptimize(y.data_ptr());
  }
  kernels::set_quant_repack(false);
  state.counters["GB/s"] = benchmark::Counter(bytes * kExperts * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.SetLabel((fmt < 0 ? std::string("bf16") : io::quant_format_name(kFormats[static_cast<size_t>(fmt)])) + " M " +
                 std::to_string(M) + (fmt >= 0 && repack ? " copies" : ""));
}

BENCHMARK(BM_QuantMoe)
    ->ArgsProduct({{0, 1, 2, 3, 4}, {1, 4, 8, 9, 12, 16, 17, 24}, {2}, {1}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(BM_QuantMoe)->ArgsProduct({{1, 3}, {1, 4, 8}, {2}, {0}})->Unit(benchmark::kMillisecond)->UseRealTime();

// A cached token-routed step's MoE layer: the 64 experts with 1-8 rows each (3.7 on average, as
// the synthetic LLaDA2 model's ~69 experts per layer), bf16 (small_m_moe) against q8 / q4 with the
// few-row vnni kernel as the 4 x 4 tiles or on repacked output lanes, interleaved call by call, each
// path's fastest call kept (as BM_QuantStepMin: a loaded machine's undisturbed calls). Counters:
// ms and GB/s of weight bytes per path. args: threads.
void BM_QuantMoeMin(benchmark::State& state) {
  torch::set_num_threads(static_cast<int>(state.range(0)));
  torch::NoGradGuard ng;
  const int64_t pattern[] = {1, 2, 1, 3, 4, 2, 6, 8, 5, 3, 2, 7};
  std::vector<int64_t> counts;
  int64_t P = 0;
  for (int64_t i = 0; i < kExperts; ++i) P += counts.emplace_back(pattern[i % 12]);
  const auto x = torch::randn({P, kD}).to(torch::kBFloat16);
  struct Path {
    const char* name;
    int fmt;  // experts() argument: -1 bf16, else a kFormats index
    bool packed;
  };
  const Path paths[] = {{"bf16", -1, false}, {"q8", 0, false}, {"q8_packed", 0, true}, {"q4", 2, false}, {"q4_packed", 2, true}};
  std::vector<torch::Tensor> g, u, d;
  for (const auto& e : experts(-1)) {
    g.push_back(e.gate);
    u.push_back(e.up);
    d.push_back(e.down);
  }
  std::map<int, kernels::QuantExperts> q;
  for (int f : {0, 2}) q[f] = quant_experts(f);
  const bool bf16 = kernels::small_m_moe_applies(x, counts, g, u, d);
  std::vector<double> best(std::size(paths), 1e30);
  for (auto _ : state)
    for (int rep = 0; rep < 15; ++rep)
      for (size_t i = 0; i < std::size(paths); ++i) {
        const auto& p = paths[i];
        if (p.fmt < 0 && !bf16) continue;
        kernels::set_quant_repack(p.packed);
        const auto t0 = std::chrono::steady_clock::now();
        auto y = p.fmt < 0 ? kernels::small_m_moe(x, counts, g, u, d)
                           : kernels::quant_moe(x, counts, q[p.fmt], torch::kBFloat16);
        benchmark::DoNotOptimize(y.data_ptr());
        best[i] = std::min(best[i], std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
      }
  kernels::set_quant_repack(false);
  for (size_t i = 0; i < std::size(paths); ++i) {
    if (paths[i].fmt < 0 && !bf16) continue;
    const double bytes = paths[i].fmt < 0 ? 3.0 * kD * kF * 2 : 3.0 * static_cast<double>(experts(paths[i].fmt)[0].qgate.bytes());
    state.counters[std::string(paths[i].name) + "_ms"] = best[i];
    state.counters[std::string(paths[i].name) + "_GBs"] = bytes * kExperts / best[i] * 1e-6;
  }
  state.SetLabel("64 experts, " + std::to_string(P) + " rows");
}

BENCHMARK(BM_QuantMoeMin)->Arg(1)->Arg(2)->Iterations(1)->Unit(benchmark::kMillisecond)->UseRealTime();

// 24 random [2048, 2048] projections in format kFormats[fmt], built once per format (streamed
// from memory: 24 x 4 MB in q8).
const std::vector<io::QuantWeight>& projections(int fmt) {
  static std::map<int, std::vector<io::QuantWeight>> weights;
  auto& w = weights[fmt];
  if (w.empty())
    for (int i = 0; i < 24; ++i) w.push_back(io::quantize(torch::randn({2048, 2048}), kFormats[static_cast<size_t>(fmt)]));
  return w;
}

// Marks the benchmark skipped on a CPU without AVX512-VNNI; true when it was.
bool skip_without_vnni(benchmark::State& state) {
  if (kernels::cpu_has_avx512_vnni()) return false;
  state.SkipWithError("no AVX512-VNNI on this CPU");
  return true;
}

// One projection [M, 2048] x [2048, 2048]ᵀ over 24 weights per path. args: format index (as
// above), M, path (kernels::QuantKernel 1 vnni, 2 avx2, 3 torch, 4 bf16)
void BM_QuantLinear(benchmark::State& state) {  // one thread (see above)
  const int fmt = static_cast<int>(state.range(0)) - 1;
  const int64_t M = state.range(1);
  const auto path = static_cast<kernels::QuantKernel>(state.range(2));
  if ((path == kernels::QuantKernel::kVnni && !kernels::cpu_has_avx512_vnni()) ||
      (path == kernels::QuantKernel::kAvx2 && !kernels::cpu_has_avx2()) ||
      (path == kernels::QuantKernel::kBf16 && !kernels::cpu_has_avx512_bf16())) {
    state.SkipWithError("path not available on this CPU");
    return;
  }
  torch::set_num_threads(1);
  const auto& w = projections(fmt);
  const auto x = torch::randn({M, 2048}).to(torch::kBFloat16);
  for (auto _ : state)
    for (const auto& wi : w) benchmark::DoNotOptimize(kernels::quant_linear(x, wi, path).data_ptr());
  state.counters["GB/s"] = benchmark::Counter(24.0 * static_cast<double>(w[0].bytes()) * 1e-9,
                                              benchmark::Counter::kIsIterationInvariantRate);
  state.SetLabel(io::quant_format_name(kFormats[static_cast<size_t>(fmt)]) + " " + kernels::quant_kernel_name(path));
}

BENCHMARK(BM_QuantLinear)
    ->ArgsProduct({{1, 3}, {1, 4, 8, 16, 32, 64}, {1, 2, 3, 4}})
    ->Unit(benchmark::kMillisecond);


// ---- The cached step's shapes (issue 18): one product y = x · wᵀ per call, M = 1, 4, 8, 32 token
// rows, bf16 (the model's kernels::linear: small-M kernel or oneDNN) against q8 / q4 per path. Each
// weight is cloned until the q4 copies pass 48 MB, so every format streams from memory (not L3).
// Counters: GB/s of weight bytes, GFLOP/s (2 M N K per product). One thread, CPU time: on a shared
// 2-core machine two busy-waiting OpenMP threads measure the neighbours, not the kernel.
// Run: build/ecdlm_microbench --benchmark_filter='BM_QuantShape'
struct StepShape {
  const char* name;
  int64_t N, K;
};
const StepShape kStepShapes[] = {{"qkv 2048->3072", 3072, 2048},   {"o 2048->2048", 2048, 2048},
                                 {"dense up 2048->5120", 5120, 2048}, {"dense down 5120->2048", 2048, 5120},
                                 {"expert up 2048->512", 512, 2048},  {"expert down 512->2048", 2048, 512}};

// Paths by argument: 0 bf16, then (format, kernel) pairs.
struct StepPath {
  const char* name;
  int fmt;  // index into kFormats, -1 bf16
  kernels::QuantKernel k;
  // vnni on the repacked output-lane copy: below 16 rows the packed few-row kernel instead of the
  // 4 x 4 tiles, from 16 rows the token-lane kernel reading the copy in place instead of its panel copy
  bool packed = false;
};
const StepPath kStepPaths[] = {{"bf16", -1, kernels::QuantKernel::kAuto},
                               {"q8 auto", 0, kernels::QuantKernel::kAuto},
                               {"q8 vnni", 0, kernels::QuantKernel::kVnni},
                               {"q8 vnni-packed", 0, kernels::QuantKernel::kVnni, true},
                               {"q8 deq-bf16", 0, kernels::QuantKernel::kBf16},
                               {"q4 auto", 2, kernels::QuantKernel::kAuto},
                               {"q4 vnni", 2, kernels::QuantKernel::kVnni},
                               {"q4 vnni-packed", 2, kernels::QuantKernel::kVnni, true},
                               {"q4 deq-bf16", 2, kernels::QuantKernel::kBf16}};

struct ShapeWeights {
  int shape = -1;
  std::vector<torch::Tensor> bf16;
  std::map<int, std::vector<io::QuantWeight>> q;  // by format index
};

ShapeWeights& shape_weights(int shape, int fmt) {
  static ShapeWeights sw;
  if (sw.shape != shape) sw = ShapeWeights{shape, {}, {}};
  const auto& s = kStepShapes[shape];
  const auto q4 = io::quant_bytes(kFormats[2], s.N, s.K);
  const int64_t copies = std::max<int64_t>(2, (48LL << 20) / q4 + 1);
  torch::manual_seed(shape);
  torch::NoGradGuard ng;
  const auto w = torch::randn({s.N, s.K}) * 0.02;
  if (fmt < 0 && sw.bf16.empty())
    for (int64_t i = 0; i < copies; ++i) sw.bf16.push_back(w.to(torch::kBFloat16).clone());
  if (fmt >= 0 && sw.q[fmt].empty()) {
    const auto one = io::quantize(w, kFormats[static_cast<size_t>(fmt)]);
    for (int64_t i = 0; i < copies; ++i) {
      auto c = one;
      c.qweight = one.qweight.clone();
      c.scales = one.scales.clone();
      if (one.mins.defined()) c.mins = one.mins.clone();
      sw.q[fmt].push_back(std::move(c));
    }
    // The output-lane copies built up front, as the readers' load does: otherwise a packed path's
    // call on a clone no earlier call touched timed the packing too (the small expert shapes'
    // clones were each called once). Their rows are anonymous memory: resident without swap (with
    // swap, MADV_PAGEOUT may send them out and the row paths' first calls fault them back).
    std::vector<const io::QuantWeight*> all;
    for (const auto& c : sw.q[fmt]) all.push_back(&c);
    kernels::prepack_quant(all);
  }
  return sw;
}

// args: path index, M, shape index (the last argument varies slowest: one shape's weights at a time)
void BM_QuantShape(benchmark::State& state) {
  const int shape = static_cast<int>(state.range(2));
  const int64_t M = state.range(1);
  const auto& p = kStepPaths[state.range(0)];
  if ((p.k == kernels::QuantKernel::kVnni && !kernels::cpu_has_avx512_vnni()) ||
      (p.k == kernels::QuantKernel::kBf16 && !kernels::cpu_has_avx512_bf16())) {
    state.SkipWithError("path not available on this CPU");
    return;
  }
  torch::set_num_threads(1);
  torch::NoGradGuard ng;
  auto& sw = shape_weights(shape, p.fmt);
  const auto& s = kStepShapes[shape];
  const auto x = torch::randn({M, s.K}).to(torch::kBFloat16);
  double bytes = 0;
  int64_t n = 0;
  if (p.fmt < 0) {
    n = static_cast<int64_t>(sw.bf16.size());
    bytes = 2.0 * s.N * s.K;
    for (auto _ : state)
      for (const auto& w : sw.bf16) benchmark::DoNotOptimize(kernels::linear(x, w).data_ptr());
  } else {
    const auto& ws = sw.q[p.fmt];
    n = static_cast<int64_t>(ws.size());
    kernels::set_quant_repack(p.packed);
    bytes = static_cast<double>(ws[0].bytes());
    for (auto _ : state)
      for (const auto& w : ws) benchmark::DoNotOptimize(kernels::quant_linear(x, w, p.k).data_ptr());
    kernels::set_quant_repack(false);
  }
  state.counters["GB/s"] = benchmark::Counter(bytes * static_cast<double>(n) * 1e-9,
                                              benchmark::Counter::kIsIterationInvariantRate);
  state.counters["GFLOP/s"] = benchmark::Counter(2.0 * static_cast<double>(M * s.N * s.K * n) * 1e-9,
                                                 benchmark::Counter::kIsIterationInvariantRate);
  state.counters["us/call"] = benchmark::Counter(static_cast<double>(n) * 1e-6, benchmark::Counter::kIsIterationInvariantRate |
                                                                                    benchmark::Counter::kInvert);
  state.SetLabel(std::string(s.name) + " M " + std::to_string(M) + " " + p.name);
}

BENCHMARK(BM_QuantShape)
    ->ArgsProduct({{0, 1, 2, 3, 4, 5, 6, 7, 8}, {1, 4, 8, 32}, {0, 1, 2, 3, 4, 5}})
    ->Unit(benchmark::kMicrosecond)
    ->MinTime(0.1);

// The same shapes, every path interleaved call by call in one loop, each path's fastest call kept
// (min over reps): on a loaded machine a call that ran undisturbed is the kernel's own speed, and
// interleaving puts every path under the same conditions. Counters: us per call per path (one
// thread, wall time) and bf16 / path ratios. args: M, shape index.
void BM_QuantStepMin(benchmark::State& state) {
  const int64_t M = state.range(0);
  const int shape = static_cast<int>(state.range(1));
  torch::set_num_threads(1);
  torch::NoGradGuard ng;
  std::vector<int> paths;
  for (int i = 0; i < static_cast<int>(std::size(kStepPaths)); ++i) {
    const auto k = kStepPaths[i].k;
    if ((k == kernels::QuantKernel::kVnni && !kernels::cpu_has_avx512_vnni()) ||
        (k == kernels::QuantKernel::kBf16 && !kernels::cpu_has_avx512_bf16()) || kStepPaths[i].name[3] == 'a')
      continue;  // the "auto" rows duplicate a forced path
    paths.push_back(i);
    shape_weights(shape, kStepPaths[i].fmt);
  }
  auto& sw = shape_weights(shape, -1);
  const auto x = torch::randn({M, kStepShapes[shape].K}).to(torch::kBFloat16);
  std::vector<double> best(std::size(kStepPaths), 1e30);
  const int reps = 40;
  for (auto _ : state)
    for (int rep = 0; rep < reps; ++rep)
      for (int i : paths) {
        const auto& p = kStepPaths[i];
        kernels::set_quant_repack(p.packed);
        const auto t0 = std::chrono::steady_clock::now();
        if (p.fmt < 0)
          benchmark::DoNotOptimize(kernels::linear(x, sw.bf16[size_t(rep) % sw.bf16.size()]).data_ptr());
        else
          benchmark::DoNotOptimize(  // a copy no other path just read: from memory, not cache
              kernels::quant_linear(x, sw.q[p.fmt][size_t(rep * 9 + i) % sw.q[p.fmt].size()], p.k).data_ptr());
        const double us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
        best[size_t(i)] = std::min(best[size_t(i)], us);
      }
  kernels::set_quant_repack(false);
  for (int i : paths) {
    std::string name = kStepPaths[i].name;
    std::replace(name.begin(), name.end(), ' ', '_');
    state.counters[name + "_us"] = best[size_t(i)];
    if (i) state.counters[name + "_x"] = best[0] / best[size_t(i)];
  }
  state.SetLabel(std::string(kStepShapes[shape].name) + " M " + std::to_string(M));
}

BENCHMARK(BM_QuantStepMin)
    ->ArgsProduct({{1, 2, 3, 4, 6, 8, 16, 32, 64}, {0, 1, 2, 3, 4, 5}})
    ->Iterations(1)
    ->Unit(benchmark::kMillisecond);

}  // namespace

namespace {

// The vnni kernels' compute speed: one [256, 2048] weight (in L2) multiplied over and over, the
// row layout (4 x 4 tiles; token lanes with their panel copy from 16 rows) against the packed
// output lanes (the few-row kernel; the token lanes reading the copy in place from 16 rows).
// args: format index (into kFormats), M, packed.
void BM_QuantHot(benchmark::State& state) {
  if (skip_without_vnni(state)) return;
  torch::set_num_threads(1);
  torch::NoGradGuard ng;
  const auto w = io::quantize(torch::randn({256, 2048}) * 0.02, kFormats[static_cast<size_t>(state.range(0))]);
  const auto x = torch::randn({state.range(1), 2048}).to(torch::kBFloat16);
  kernels::set_quant_repack(state.range(2) == 1);
  for (auto _ : state) benchmark::DoNotOptimize(kernels::quant_linear(x, w, kernels::QuantKernel::kVnni).data_ptr());
  kernels::set_quant_repack(false);
  state.counters["GB/s"] = benchmark::Counter(static_cast<double>(w.bytes()) * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.SetLabel(io::quant_format_name(kFormats[static_cast<size_t>(state.range(0))]) + " M " +
                 std::to_string(state.range(1)) + (state.range(2) ? " packed" : " rows"));
}

BENCHMARK(BM_QuantHot)->ArgsProduct({{0, 1, 2, 3}, {1, 4, 8, 12, 16, 24, 32, 64}, {0, 1}})->Unit(benchmark::kMicrosecond)->MinTime(0.2);

}  // namespace

namespace {

// The token-lane kernel's compute speed on its two weight layouts, interleaved call by call, each
// one's fastest call kept (a loaded machine's undisturbed calls): one [256, 2048] weight (in L2),
// the row layout (panel copy per call) against the packed copy read in place. Counters: us per
// call, panel / packed. args: format index (into kFormats), M (16+).
void BM_QuantLanesHotMin(benchmark::State& state) {
  if (skip_without_vnni(state)) return;
  torch::set_num_threads(1);
  torch::NoGradGuard ng;
  const auto f = kFormats[static_cast<size_t>(state.range(0))];
  const auto w = io::quantize(torch::randn({256, 2048}) * 0.02, f);
  const auto x = torch::randn({state.range(1), 2048}).to(torch::kBFloat16);
  double best[2] = {1e30, 1e30};
  for (auto _ : state)
    for (int rep = 0; rep < 300; ++rep)
      for (int packed = 0; packed < 2; ++packed) {
        kernels::set_quant_repack(packed == 1);
        const auto t0 = std::chrono::steady_clock::now();
        benchmark::DoNotOptimize(kernels::quant_linear(x, w, kernels::QuantKernel::kVnni).data_ptr());
        best[packed] =
            std::min(best[packed], std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count());
      }
  kernels::set_quant_repack(false);
  state.counters["panel_us"] = best[0];
  state.counters["packed_us"] = best[1];
  state.counters["speedup"] = best[0] / best[1];
  state.SetLabel(io::quant_format_name(f) + " M " + std::to_string(state.range(1)));
}

BENCHMARK(BM_QuantLanesHotMin)->ArgsProduct({{0, 1, 2, 3, 4}, {16, 17, 32, 40, 64}})->Iterations(1)->Unit(benchmark::kMillisecond);

}  // namespace

namespace {
// The many-row (prefill) path: one projection [M, 2048] x [2048, 2048]ᵀ over 24 weights, one
// thread, by path: 0 dequantize + torch's GEMM (what auto takes above 64 rows on the row layout
// outside the decoders), 1 the token-lane kernel on the repacked copies (what auto takes at any M
// with repacking on), 2 / 3 the vnni 4 x 4 tiles / the avx2 kernel on the row layout at any M
// (what the decoders take there: a row's bits must not depend on its batch).
// args: format index (as above), M, path.
void BM_QuantPrefill(benchmark::State& state) {
  if (skip_without_vnni(state)) return;
  torch::set_num_threads(1);
  const int fmt = static_cast<int>(state.range(0)) - 1;
  const int64_t M = state.range(1);
  const int path = static_cast<int>(state.range(2));
  const auto& w = projections(fmt);
  const auto x = torch::randn({M, 2048}).to(torch::kBFloat16);
  kernels::set_quant_repack(path == 1);
  std::optional<kernels::F32TilesScope> decoders;
  if (path >= 2) decoders.emplace();
  const auto k = path == 3 ? kernels::QuantKernel::kAvx2 : kernels::QuantKernel::kAuto;
  kernels::set_quant_kernel(k);
  for (const auto& wi : w) kernels::quant_linear(x, wi);  // builds the copies outside the timing
  for (auto _ : state)
    for (const auto& wi : w) benchmark::DoNotOptimize(kernels::quant_linear(x, wi).data_ptr());
  kernels::set_quant_repack(false);
  kernels::set_quant_kernel(kernels::QuantKernel::kAuto);
  state.counters["GFLOP/s"] = benchmark::Counter(24.0 * 2.0 * static_cast<double>(M) * 2048 * 2048 * 1e-9,
                                                 benchmark::Counter::kIsIterationInvariantRate);
  static const char* const names[] = {" torch", " lanes, repacked", " vnni tiles, decoders", " avx2, decoders"};
  state.SetLabel(io::quant_format_name(kFormats[static_cast<size_t>(fmt)]) + names[path]);
}
BENCHMARK(BM_QuantPrefill)->ArgsProduct({{1, 2, 3, 4}, {32, 65, 128, 256}, {0, 1, 2, 3}})->Unit(benchmark::kMillisecond);
}  // namespace

namespace {
// The dot-product instructions' peak on one core, so the kernels' GFLOP/s can be read as a fraction
// of it: 12 independent accumulators in registers, nothing but vpdpbusd (int8: 64 multiply-adds,
// 128 ops each) or vdpbf16ps (bf16: 32, 64 flops). Counter GOPS. args: 0 vpdpbusd, 1 vdpbf16ps.
#define ECDLM_R12(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11)
__attribute__((target("avx512f,avx512bw,avx512vnni"), noinline)) int32_t vnni_chains(int64_t n) {
#define ECDLM_INIT(i) __m512i a##i = _mm512_set1_epi32(i);
  ECDLM_R12(ECDLM_INIT)
  __m512i w = _mm512_set1_epi32(0x01010101), x = _mm512_set1_epi32(0x01020304);
  asm("" : "+v"(w), "+v"(x));  // opaque operands: the loop is not folded
  for (int64_t i = 0; i < n; ++i) {
#define ECDLM_STEP(i) a##i = _mm512_dpbusd_epi32(a##i, w, x);
    ECDLM_R12(ECDLM_STEP)
  }
  int32_t s = 0;
#define ECDLM_SUM(i) s += _mm512_reduce_add_epi32(a##i);
  ECDLM_R12(ECDLM_SUM)
  return s;
}
__attribute__((target("avx512f,avx512bw,avx512bf16"), noinline)) float bf16_chains(int64_t n) {
#define ECDLM_INITF(i) __m512 f##i = _mm512_set1_ps(i);
  ECDLM_R12(ECDLM_INITF)
  __m512bh w = (__m512bh)_mm512_set1_epi32(0x3f803f80);
  asm("" : "+v"(w));
  for (int64_t i = 0; i < n; ++i) {
#define ECDLM_STEPF(i) f##i = _mm512_dpbf16_ps(f##i, w, w);
    ECDLM_R12(ECDLM_STEPF)
  }
  float s = 0;
#define ECDLM_SUMF(i) s += _mm512_reduce_add_ps(f##i);
  ECDLM_R12(ECDLM_SUMF)
  return s;
}
void BM_DotPeak(benchmark::State& state) {
  const bool bf16 = state.range(0) == 1;
  if (bf16 ? !kernels::cpu_has_avx512_bf16() : !kernels::cpu_has_avx512_vnni()) {
    state.SkipWithError(bf16 ? "no AVX512-BF16" : "no AVX512-VNNI");
    return;
  }
  constexpr int64_t kIters = 1 << 22;
  for (auto _ : state) {
    if (bf16)
      benchmark::DoNotOptimize(bf16_chains(kIters));
    else
      benchmark::DoNotOptimize(vnni_chains(kIters));
  }
  state.counters["GOPS"] = benchmark::Counter(12.0 * kIters * (bf16 ? 64 : 128) * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.SetLabel(bf16 ? "vdpbf16ps, one core" : "vpdpbusd, one core");
}
#undef ECDLM_R12
#undef ECDLM_INIT
#undef ECDLM_STEP
#undef ECDLM_SUM
#undef ECDLM_INITF
#undef ECDLM_STEPF
#undef ECDLM_SUMF
BENCHMARK(BM_DotPeak)->Arg(0)->Arg(1)->Unit(benchmark::kMillisecond);
}  // namespace

namespace {
// The two kernels on the repacked copies at the same rows, interleaved call by call (the machine's
// noise hits both alike), medians of 9 calls each: the few-row kernel (passes of 8 tokens) against
// the token lanes (16 tokens per vector), by shape: 0 LLaDA2's LM head [157184, 2048] (one product,
// 2 threads, from memory), 1 the 64 experts of BM_QuantMoe with M rows each (2 threads), 2 one hot
// [256, 2048] weight (one thread, in L2: the arithmetic alone). What set kPackedLaneMinRows.
// args: shape, format (index into kFormats), M.
void BM_PackedFewRowVsLanes(benchmark::State& state) {
  if (skip_without_vnni(state)) return;
  const int shape = static_cast<int>(state.range(0));
  const auto f = kFormats[static_cast<size_t>(state.range(1))];
  const int64_t M = state.range(2);
  torch::set_num_threads(shape == 2 ? 1 : 2);
  torch::NoGradGuard ng;
  static std::map<std::pair<int, int64_t>, io::QuantWeight> single;
  io::QuantWeight& w = single[{shape, state.range(1)}];
  kernels::QuantExperts q;
  torch::Tensor x;
  std::vector<int64_t> counts;
  if (shape == 1) {
    q = quant_experts(static_cast<int>(state.range(1)));
    counts.assign(kExperts, M);
    x = torch::randn({M * kExperts, kD}).to(torch::kBFloat16);
  } else {
    if (!w.qweight.defined()) w = io::quantize(torch::randn({shape == 0 ? 157184 : 256, 2048}) * 0.02, f);
    x = torch::randn({M, 2048}).to(torch::kBFloat16);
  }
  kernels::set_quant_repack(true);
  const auto call = [&] {
    auto y = shape == 1 ? kernels::quant_moe(x, counts, q, torch::kBFloat16) : kernels::quant_linear(x, w);
    benchmark::DoNotOptimize(y.data_ptr());
  };
  call();  // builds the copies outside the timing
  std::vector<double> ms[2];
  for (auto _ : state)
    for (int rep = 0; rep < 9; ++rep)
      for (int lanes = 0; lanes < 2; ++lanes) {
        kernels::detail::set_packed_lane_min_rows(lanes ? 16 : int64_t{1} << 20);  // lanes from 16 rows, or never
        const auto t0 = std::chrono::steady_clock::now();
        call();
        ms[lanes].push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
      }
  kernels::detail::set_packed_lane_min_rows(kernels::detail::kPackedLaneMinRows);
  kernels::set_quant_repack(false);
  for (auto& v : ms) std::sort(v.begin(), v.end());
  const double few = ms[0][ms[0].size() / 2], lanes = ms[1][ms[1].size() / 2];
  state.counters["few_row_ms"] = few;
  state.counters["lanes_ms"] = lanes;
  state.counters["few_row_x"] = lanes / few;
  static const char* const names[] = {"LM head 157184 x 2048", "64 experts", "hot 256 x 2048"};
  state.SetLabel(std::string(names[shape]) + ", " + io::quant_format_name(f) + ", M " + std::to_string(M));
}

BENCHMARK(BM_PackedFewRowVsLanes)
    ->ArgsProduct({{0, 1, 2}, {0, 3}, {16, 24, 32, 64, 128, 224, 512}})
    ->Iterations(1)
    ->Unit(benchmark::kMillisecond);

}  // namespace

namespace {
// One weight [N, 2048] of format f with its packed copy, and M quantized token rows.
struct PackedCase {
  io::QuantWeight w;
  std::shared_ptr<const kernels::detail::Packed> pk;
  kernels::detail::QwOperand wo;
  kernels::detail::QxScratch buf;
  kernels::detail::QxOperand x;
  std::vector<float> y;
  PackedCase(io::QuantFormat f, int64_t M, int64_t N, int64_t K = 2048)
      : w(io::quantize(torch::randn({N, K}) * 0.02, f)), pk(kernels::detail::packed(w)), wo(kernels::detail::weight_operand(w)) {
    wo.packed = pk.get();
    const auto store = buf.store(M, K, f.group);
    const auto xf = torch::randn({M, K});
    for (int64_t m = 0; m < M; ++m)
      kernels::detail::quantize_row(xf.data_ptr<float>() + m * K, K, store, m, 0, kernels::detail::vnni_zero_point(f.kind));
    x = store.view();
    y.resize(static_cast<size_t>(M * N));
  }
  void run() { kernels::detail::vnni_packed_rows(x, *pk, wo, 0, w.N, y.data(), w.N); }
};

// Two variants of c's product (use(v) switches to variant v) interleaved call by call, so the
// machine's drift hits both alike: medians of 31 calls each, in ms.
std::array<double, 2> interleaved_medians(benchmark::State& state, PackedCase& c, const std::function<void(int)>& use) {
  std::vector<double> ms[2];
  for (auto _ : state)
    for (int rep = 0; rep < 31; ++rep)
      for (int v = 0; v < 2; ++v) {
        use(v);
        const auto t0 = std::chrono::steady_clock::now();
        c.run();
        benchmark::DoNotOptimize(c.y.data());
        ms[v].push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
      }
  for (auto& v : ms) std::sort(v.begin(), v.end());
  return {ms[0][ms[0].size() / 2], ms[1][ms[1].size() / 2]};
}

// Counters of two variants' medians (ms) of c's product: each one's GOPS and `speedup` (a / b).
void report_two(benchmark::State& state, const PackedCase& c, const std::string& a, double a_ms, const std::string& b,
                double b_ms, const std::string& speedup) {
  const double gop = 2.0 * static_cast<double>(c.x.M * c.w.N * c.w.K) * 1e-9;
  state.counters[a + "_GOPS"] = gop / (a_ms * 1e-3);
  state.counters[b + "_GOPS"] = gop / (b_ms * 1e-3);
  state.counters[speedup] = a_ms / b_ms;
  state.SetLabel(io::quant_format_name(c.w.format) + " M " + std::to_string(c.x.M) + " N " + std::to_string(c.w.N));
}

// The few-row kernel alone (kernels::detail::vnni_packed_rows on a packed copy, one thread): no
// activation quantization, no dispatch, no output conversion. args: format, M, weight rows N (16:
// one 16-row block, in L1; 256: in L2; 8192: in L3, q8 16 MB / q4_g64 9 MB of the 32 MB here).
void BM_PackedKernel(benchmark::State& state) {
  if (skip_without_vnni(state)) return;
  const auto f = kFormats[static_cast<size_t>(state.range(0))];
  const int64_t M = state.range(1), N = state.range(2), K = 2048;
  PackedCase c(f, M, N, K);
  for (auto _ : state) {
    c.run();
    benchmark::DoNotOptimize(c.y.data());
  }
  state.counters["GOPS"] = benchmark::Counter(2.0 * static_cast<double>(M * N * K) * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.SetLabel(io::quant_format_name(f) + " M " + std::to_string(M) + " N " + std::to_string(N));
}
BENCHMARK(BM_PackedKernel)->ArgsProduct({{0, 3}, {1, 4, 8, 9, 12, 16, 24, 32}, {16, 256, 8192}})->Unit(benchmark::kMicrosecond);

// Paired 16-row blocks against single ones in the few-row kernel, interleaved call by call (the
// machine's drift hits both alike), medians of 31 calls each, one thread. args: format, M, N (as
// BM_PackedKernel). Counters: each path's GOPS and pair_speedup (single ms / paired ms).
void BM_PackedPairs(benchmark::State& state) {
  if (skip_without_vnni(state)) return;
  const auto f = kFormats[static_cast<size_t>(state.range(0))];
  const int64_t M = state.range(1), N = state.range(2), K = 2048;
  PackedCase c(f, M, N, K);
  const auto [single, paired] = interleaved_medians(state, c, [](int pairs) {
    kernels::detail::set_packed_pair_min_rows(pairs ? 1 : int64_t{1} << 40);
  });
  kernels::detail::set_packed_pair_min_rows(kernels::detail::kPackedPairMinRows);
  report_two(state, c, "single", single, "pairs", paired, "pair_speedup");
}
BENCHMARK(BM_PackedPairs)
    ->ArgsProduct({{1, 3}, {1, 2, 4, 6, 8, 9, 12, 16, 24, 32}, {256, 8192}})
    ->Iterations(1)
    ->Unit(benchmark::kMillisecond);

// convert --quantize's per-tensor work (io::quantize: group scales, codes, q4's least-squares
// refinement) on one [2048, 2048] f32 weight, all threads. args: format index (kFormats).
void BM_Quantize(benchmark::State& state) {
  const auto f = kFormats[static_cast<size_t>(state.range(0))];
  torch::manual_seed(5);
  const auto w = torch::randn({2048, 2048}) * 0.02;
  for (auto _ : state) benchmark::DoNotOptimize(io::quantize(w, f).qweight.data_ptr());
  state.counters["Mweights_per_s"] =
      benchmark::Counter(2048.0 * 2048.0 * 1e-6, benchmark::Counter::kIsIterationInvariantRate);
  state.SetLabel(io::quant_format_name(f));
}
BENCHMARK(BM_Quantize)->DenseRange(0, 5)->Unit(benchmark::kMillisecond)->UseRealTime();

// AMX-INT8 tiles against the VNNI few-row kernel on the same copy (same bits), interleaved call by
// call, medians of 31 each, one thread; AMX CPUs only (kPackedAmxMinRows is a guess until this has
// run on one). args: format, M, N (as BM_PackedKernel). Counters: each path's GOPS, amx_speedup.
void BM_PackedAmx(benchmark::State& state) {
  if (!kernels::cpu_has_amx_int8()) {
    state.SkipWithError("no AMX-INT8 on this CPU");
    return;
  }
  const auto f = kFormats[static_cast<size_t>(state.range(0))];
  const int64_t M = state.range(1), N = state.range(2), K = 2048;
  PackedCase c(f, M, N, K);
  kernels::detail::set_packed_amx_min_rows(1);
  const auto [vnni, amx] = interleaved_medians(state, c, [&c](int tiles) { c.wo.amx = tiles == 1; });
  kernels::detail::set_packed_amx_min_rows(kernels::detail::kPackedAmxMinRows);
  report_two(state, c, "vnni", vnni, "amx", amx, "amx_speedup");
}
BENCHMARK(BM_PackedAmx)
    ->ArgsProduct({{0, 1, 3}, {1, 4, 8, 9, 16, 32, 64, 128}, {256, 8192}})
    ->Iterations(1)
    ->Unit(benchmark::kMillisecond);
}  // namespace
