// One continuous-batching step (gen::ContinuousBatcher, the server's decoder) at 1 to 16 rows, on a
// model directory: ECDLM_BENCH_MODEL=runs/brown-tc/best (skipped when unset). Rows have prompts of
// 16-96 tokens and 64 generated tokens (bench serve's requests, greedy, EOS ignored), block 32, 8
// steps per block; a row that finishes is replaced at once, so the batch stays full. Counters:
// ms per step and its profiled parts, per step. The side-by-side numbers under HTTP load come
// from `ecdlm bench serve`; this isolates the step for perf record.
// Run: ECDLM_BENCH_MODEL=DIR build/ecdlm_microbench --benchmark_filter=ContinuousStep
#include <benchmark/benchmark.h>
#include <torch/torch.h>

#include <cstdlib>
#include <random>

#include "ecdlm/generate/continuous.h"
#include "ecdlm/model/checkpoint.h"
#include "ecdlm/util/profile.h"
#include "ecdlm/kernels/small_m.h"

using namespace ecdlm;

namespace {

MoeDlm* dir_model() {
  static MoeDlm* m = [] {
    const char* dir = std::getenv("ECDLM_BENCH_MODEL");
    return dir && *dir ? new MoeDlm(load_model(dir)) : nullptr;
  }();
  return m;
}

// args: rows, threads
void BM_ContinuousStep(benchmark::State& state) {
  auto* model = dir_model();
  if (!model) {
    state.SkipWithError("set ECDLM_BENCH_MODEL to a model directory");
    return;
  }
  torch::set_num_threads(static_cast<int>(state.range(1)));
  const auto& cfg = (*model)->config();
  gen::BatcherParams bp;
  gen::ContinuousBatcher cb(*model, bp);
  gen::ThresholdParams tp;
  tp.gen_length = 64;
  tp.steps = 8;
  tp.eos_id = -2;
  tp.mask_id = cfg.mask_token_id;
  std::mt19937_64 rng(7);
  int64_t added = 0;
  auto add = [&] {
    std::vector<int64_t> pr(static_cast<size_t>(16 + 16 * (added % 6)));
    for (auto& t : pr) t = static_cast<int64_t>(rng() % static_cast<uint64_t>(cfg.vocab_size - 4)) + 4;
    tp.seed = added++;
    cb.add(pr, tp);
  };
  for (int64_t i = 0; i < state.range(0); ++i) add();
  for (int i = 0; i < 4; ++i) cb.step();  // past the first prefills
  prof::set_enabled(true);
  prof::reset();
  int64_t steps = 0, rows = 0;
  for (auto _ : state) {
    gen::StepStats st;
    for (const auto& ev : cb.step(&st))
      if (ev.finished) add();
    ++steps;
    rows += st.rows;
  }
  const double n = static_cast<double>(std::max<int64_t>(1, steps));
  state.counters["rows"] = static_cast<double>(rows) / n;
  const auto parts = prof::totals_ms();
  for (int p = 0; p < prof::kParts; ++p)
    state.counters[prof::part_name(static_cast<prof::Part>(p))] = parts[static_cast<size_t>(p)] / n;
  prof::set_enabled(false);
}

BENCHMARK(BM_ContinuousStep)->ArgsProduct({{1, 8, 16}, {1, 2}})->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(2.0);

}  // namespace

namespace {
// kernels::f32_linear against torch's linear (OpenBLAS) at the Brown model's shapes (K = 256; N = 256
// projections, 8192 LM head), one thread. args: M, N, kernel (0 torch, 1 f32 dot tiles).
void BM_F32Linear(benchmark::State& state) {
  torch::set_num_threads(1);
  torch::NoGradGuard ng;
  kernels::F32TilesScope tiles;
  const int64_t M = state.range(0), N = state.range(1), K = 256;
  auto x = torch::randn({M, K}), w = torch::randn({N, K});
  for (auto _ : state) {
    auto y = state.range(2) ? kernels::f32_linear(x, w) : torch::nn::functional::linear(x, w);
    benchmark::DoNotOptimize(y.data_ptr());
  }
  state.counters["GFLOPs"] = benchmark::Counter(2.0 * M * N * K, benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_F32Linear)->ArgsProduct({{2, 16, 64, 256, 512}, {256, 8192}, {0, 1}});
}  // namespace
