// Threshold block decoding on the synthetic LLaDA2.0-mini-shaped model (bench generate's model:
// 1 dense + 3 MoE layers, bf16) with the KV cache on and off: 64 generated tokens after a 64-token
// prompt, sampled, no early stop. For profiling one path at a time (perf record); the side-by-side
// numbers come from `ecdlm bench generate`. Run: build/ecdlm_microbench --benchmark_filter=Decode
#include <benchmark/benchmark.h>
#include <torch/torch.h>

#include "ecdlm/bench/generate_bench.h"
#include "ecdlm/generate/threshold.h"
#include "ecdlm/model/attention.h"
#include "ecdlm/util/profile.h"

using namespace ecdlm;

namespace {

MoeDlm& synthetic_model() {
  static MoeDlm m = bench::make_synthetic_model(bench::synthetic_llada2_config(3, 32768), 7);
  return m;
}

// args: threads, kv cache (0/1), routing (0 token, 1 block p 0.6)
void BM_Decode(benchmark::State& state) {
  torch::set_num_threads(static_cast<int>(state.range(0)));
  auto& model = synthetic_model();
  auto gen_ids = at::detail::createCPUGenerator(7);  // bench generate's prompt
  auto prompt_t = torch::randint(4, 30000, {64}, gen_ids, torch::kInt64);
  std::vector<int64_t> prompt(prompt_t.data_ptr<int64_t>(), prompt_t.data_ptr<int64_t>() + 64);
  gen::ThresholdParams tp;
  tp.gen_length = 64;
  if (state.range(2)) {  // dMoE block routing, bench generate's setting
    tp.routing.policy = moe::RoutingPolicy::kBlock;
    tp.routing.block_top_p = 0.6;
    tp.routing.block_min_experts = 16;
  }
  tp.temperature = 1.0;
  tp.eos_id = -2;
  tp.kv_cache = state.range(1) != 0;
  tp.seed = 7;
  int64_t forwards = 0;
  prof::set_enabled(true);
  prof::reset();
  double step_ms = 0;
  for (auto _ : state) {
    auto res = gen::threshold_generate(model, prompt, tp);
    forwards += res.forwards;
    for (const auto& f : res.per_forward) step_ms += f.ms;
    state.counters["unique_experts"] = res.avg_unique_experts_per_layer;
  }
  // Milliseconds per denoising step: the whole step and its profiled parts (prefill and
  // block-commit forwards included in the parts, as they are few).
  const double n = static_cast<double>(std::max<int64_t>(1, forwards));
  state.counters["step_ms"] = step_ms / n;
  const auto parts = prof::totals_ms();
  for (int p = 0; p < prof::kParts; ++p)
    state.counters[prof::part_name(static_cast<prof::Part>(p))] = parts[static_cast<size_t>(p)] / n;
  prof::set_enabled(false);
  state.SetLabel(std::string(state.range(2) ? "block" : "token") + (tp.kv_cache ? ", cache, " : ", no cache, ") +
                 std::to_string(state.range(0)) + " thread(s)");
}

BENCHMARK(BM_Decode)->ArgsProduct({{1, 2}, {1, 0}, {0, 1}})->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(1);

}  // namespace

namespace {

// One attention layer of the synthetic LLaDA2 model in a cached step: 32 queries against a
// 192-position K/V cache, bf16. For the per-op overhead that does not shrink with the tokens.
void BM_CachedAttention(benchmark::State& state) {
  torch::set_num_threads(static_cast<int>(state.range(0)));
  torch::NoGradGuard ng;
  auto& model = synthetic_model();
  auto layer = std::dynamic_pointer_cast<DecoderLayerImpl>(model->model->layers->children()[1]);
  const int64_t L = 32, S = 192;
  auto x = torch::randn({1, L, 2048}).to(torch::kBFloat16);
  LayerKv past{torch::randn({1, 4, S, 128}).to(torch::kBFloat16), torch::randn({1, 4, S, 128}).to(torch::kBFloat16)};
  const auto& cfg = model->config();
  auto rope = rope_table(torch::arange(S, S + L, torch::kInt64), cfg.rotary_dim(), cfg.rope_theta, torch::kBFloat16);
  auto mask = block_causal_mask(S, L, S + L, 32);
  for (auto _ : state) {
    auto y = layer->attention->forward(x, rope, mask, &past, nullptr);
    benchmark::DoNotOptimize(y.data_ptr());
  }
}

BENCHMARK(BM_CachedAttention)->Arg(1)->Arg(2)->Unit(benchmark::kMicrosecond)->UseRealTime();

}  // namespace
