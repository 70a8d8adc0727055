// Microbenchmarks of one MoE layer (router + dispatch + experts + combine), forward and backward,
// for each router and for the slow reference loop. Run: build/ecdlm_microbench
#include <benchmark/benchmark.h>
#include <torch/torch.h>

#include <cstdlib>
#include <string>

#include "ecdlm/moe/moe_block.h"
#include "ecdlm/util/compat.h"
#include "ecdlm/util/huge_pages.h"

using namespace ecdlm;

namespace {

enum Variant : int { kEc = 0, kTcDropless = 1, kTcCapacity = 2 };

ModelConfig layer_config(Variant v) {
  ModelConfig c;
  c.hidden_size = 256;
  c.num_experts = 32;
  c.num_experts_per_tok = 2;
  c.moe_intermediate_size = 256;
  c.shared_expert_intermediate_size = 256;
  c.router_type = v == kEc ? RouterType::kExpertChoice : RouterType::kTokenChoice;
  c.moe_capacity_factor = v == kTcCapacity ? 1.25 : 0.0;
  c.moe_enable_scaling_factor = true;
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
