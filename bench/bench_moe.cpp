// Microbenchmarks of one MoE layer (router + dispatch + experts + combine), forward and backward,
// for each router and for the slow reference loop. Run: build/ecdlm_microbench
#include <benchmark/benchmark.h>
#include <torch/torch.h>

#include <cstdlib>
#include <string>

#include "ecdlm/bench/generate_bench.h"
#include "ecdlm/moe/moe_block.h"
#include "ecdlm/util/compat.h"
#include "ecdlm/util/huge_pages.h"
#include "ecdlm/util/profile.h"

using namespace ecdlm;

namespace {

enum Variant : int { kEc = 0, kTcDropless = 1, kTcCapacity = 2 };

moe::MoeConfig layer_config(Variant v) {
  moe::MoeConfig c;
  c.hidden_size = 256;
  c.num_experts = 32;
  c.num_experts_per_tok = 2;
  c.moe_intermediate_size = 256;
  c.shared_expert_intermediate_size = 256;
  c.router_type = v == kEc ? moe::RouterType::kExpertChoice : moe::RouterType::kTokenChoice;
  c.capacity_factor = v == kTcCapacity ? 1.25 : 0.0;
  c.enable_scaling_factor = true;
  return c;
}

// args: variant, reference (0/1), bf16 (0/1), backward (0/1)
void BM_MoeLayer(benchmark::State& state) {
  torch::set_num_threads(2);
  const auto v = static_cast<Variant>(state.range(0));
  const bool reference = state.range(1), bf16 = state.range(2), backward = state.range(3);
  torch::manual_seed(0);
  moe::MoeBlock block(layer_config(v));
  block->train();
  const int64_t B = 16, L = 256;
  auto x = torch::randn({B, L, 256}).requires_grad_(backward);
  moe::MoeForwardArgs args;
  args.reference = reference;
  if (v == kEc) args.capacity_B = torch::full({B}, L * 2 / 32, torch::kInt64);
  for (auto _ : state) {
    compat::CpuAutocast ac(bf16);
    auto y = block->forward(x, args);
    if (backward) y.to(torch::kFloat32).sum().backward();
    benchmark::DoNotOptimize(y.data_ptr());
  }
  state.SetItemsProcessed(state.iterations() * B * L);
  state.SetLabel(std::string(v == kEc ? "ec" : v == kTcDropless ? "tc-dropless" : "tc-cf1.25") +
                 (reference ? " reference" : " fast") + (bf16 ? " bf16" : " fp32") +
                 (backward ? " fwd+bwd" : " fwd"));
}

BENCHMARK(BM_MoeLayer)
    ->ArgsProduct({{kEc, kTcDropless, kTcCapacity}, {0}, {0, 1}, {0, 1}})
    ->Args({kEc, 1, 0, 0})
    ->Args({kTcDropless, 1, 0, 0})
    ->Unit(benchmark::kMillisecond);

// One MoE layer of a KV-cached decoding step at LLaDA2.0-mini's shapes (2048 hidden, 256 experts
// of 512, top-8 in 8 groups / 4, sigmoid + bias, shared expert; bf16 experts, f32 router) on a
// 32-token block, three layers so the experts stream from memory. Counters split the time into
// router, routed experts (dispatch + experts + combine) and the shared expert.
void BM_MoeDecodeLayer(benchmark::State& state) {
  torch::set_num_threads(static_cast<int>(state.range(0)));
  torch::NoGradGuard ng;
  const auto c = moe_config_from(bench::synthetic_llada2_config(1, 32768));  // its MoE layer
  static std::vector<moe::MoeBlock> blocks;
  static std::vector<torch::Tensor> xs;
  if (blocks.empty()) {
    torch::manual_seed(0);
    for (int i = 0; i < 3; ++i) {
      moe::MoeBlock b(c);
      bench::init_synthetic_router(*b);
      b->experts->to(torch::kBFloat16);
      b->shared_experts->to(torch::kBFloat16);
      b->eval();
      blocks.push_back(b);
      xs.push_back(torch::randn({1, 32, 2048}).to(torch::kBFloat16));
    }
  }
  prof::set_enabled(true);
  prof::reset();
  moe::MoeForwardArgs args;
  double unique = 0;
  for (size_t i = 0; i < blocks.size(); ++i) {
    blocks[i]->experts->reset_touched();
    blocks[i]->forward(xs[i], args);
    unique += static_cast<double>(blocks[i]->experts->num_touched());
  }
  prof::reset();
  for (auto _ : state)
    for (size_t i = 0; i < blocks.size(); ++i) {
      auto y = blocks[i]->forward(xs[i], args);
      benchmark::DoNotOptimize(y.data_ptr());
    }
  const auto t = prof::totals_ms();
  const double n = static_cast<double>(state.iterations() * 3);
  state.counters["router_ms"] = t[prof::kRouter] / n;
  state.counters["experts_ms"] = t[prof::kExperts] / n;
  state.counters["shared_ms"] = t[prof::kShared] / n;
  state.counters["experts"] = unique / 3;
  state.counters["GB/s"] = unique * static_cast<double>(blocks[0]->experts->bytes_per_expert()) / 1e6 / (t[prof::kExperts] / n * 3);
  prof::set_enabled(false);
}

BENCHMARK(BM_MoeDecodeLayer)->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace

// As the CLI: large tensors on huge pages, unless ECDLM_HUGE_PAGES=0 (for A/B runs).
int main(int argc, char** argv) {
  const char* hp = std::getenv("ECDLM_HUGE_PAGES");
  if (!(hp && (std::string(hp) == "0" || std::string(hp) == "off"))) ecdlm::huge_pages::install();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
