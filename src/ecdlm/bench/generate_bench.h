// `ecdlm bench generate`: threshold block decoding side by side under several MoE routing
// policies (token, dMoE block at several p, top-k cap, DES-S / DES-V as we interpret them, expert
// choice) and with the KV cache on and off (256-token generation by default), on (1) a trained Brown model and (2) a synthetic model with LLaDA2.0-mini's per-layer
// shapes (2048 hidden, 256 experts of 512, top-8 in 8 groups / 4, shared expert, bf16).
#pragma once
#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "ecdlm/model/config.h"
#include "ecdlm/model/moe_dlm.h"

namespace ecdlm::bench {

struct GenBenchParams {
  bool quick = false;  // fewer variants (block p 0.6 only); the CLI sets the smaller sizes
  std::string brown_model = "runs/brown-small-tc/best";  // a token-choice Brown model ("" = skip)
  int64_t synth_moe_layers = 3;     // + 1 dense layer, as LLaDA2 layer 0
  int64_t synth_vocab = 32768;      // LLaDA2's 157184 scaled by layers kept / 20 (see .cpp)
  int64_t prompt_len = 64, gen_length = 256, block_length = 32;
  int64_t reps = 3;                 // repetitions, variants interleaved; medians reported
  uint64_t seed = 7;
  std::vector<std::string> policies;  // routing policies to run (empty = all): token block topk des-s des-v ec
  // KV cache settings to run ("on", "off"; empty = both): "on" alone skips the slow uncached forwards.
  std::vector<std::string> kv_cache;
  // Small-M kernels to compare (kernels::SmallM names: auto, amx, avx512, torch). Every routing
  // variant runs once per kernel.
  std::vector<std::string> kernels = {"auto"};
  // Weight formats of the synthetic model, side by side (--bench-quant): "bf16", "q8", "q4",
  // "q8_g64", ... Each quantized copy packs the default set (experts, shared experts, dense MLP,
  // attention; model/quantize.h) of the same random weights; "q4+head" packs the LM head too;
  // each copy runs as the readers' --quant-repack auto does (output-lane copies where the kernel is
  // AVX512-VNNI, kernels/quant_repack.h); a last "+rows" keeps the row layout, "+repack" asks for copies.
  // Empty = bf16 only.
  std::vector<std::string> quant;
};

struct GenBenchRow {
  std::string model, routing;       // routing: token | block | topk | des-s | des-v | ec
  double top_p = 0.0;               // block routing's p (0 otherwise)
  int64_t block_min_experts = 0;    // block routing's minimum coreset size G (0 otherwise)
  bool kv_cache = true;
  std::string kernel = "auto";  // the small-M kernel choice
  std::string weights = "bf16";  // bf16 or the quantized format (q8_g32, ...)
  int64_t gen_length = 0;
  // Weight bytes a forward streams per part: routed experts (measured per forward) + shared
  // experts, attention projections, dense MLP layers, LM head; and the machine's read bandwidth
  // measured in the same run (the floor each part's GB/s is compared with).
  double moe_bytes_per_forward = 0, attention_bytes = 0, dense_bytes = 0, head_bytes = 0, stream_gbps = 0;
  double unique_experts_per_block = 0, expert_bytes_per_forward = 0;
  // Per denoising forward (medians over repetitions): the whole step (forward, sampling, commit)
  // and its profiled parts; other = the step minus the parts.
  double ms_per_forward = 0, moe_ms_per_forward = 0, attention_ms_per_forward = 0, dense_ms_per_forward = 0,
         head_ms_per_forward = 0, other_ms_per_forward = 0;
  double tokens_per_s = 0, tokens_per_forward = 0;
  int64_t forwards = 0;
  std::vector<double> tokens_per_s_reps;  // one per repetition, in order
};

// KV cache on vs off for one model, routing and kernel: tokens/s ratio per repetition (both runs of a
// pair come from the same repetition round), and their median.
struct GenBenchCacheRatio {
  std::string model, routing, kernel;
  double top_p = 0.0;
  int64_t block_min_experts = 0;
  int64_t gen_length = 0;
  std::vector<double> ratios;
  double median = 0;
};
std::vector<GenBenchCacheRatio> cache_ratios(const std::vector<GenBenchRow>& rows);

// The synthetic LLaDA2.0-mini-shaped config (per-layer shapes exact, fewer layers, smaller vocab).
ModelConfig synthetic_llada2_config(int64_t moe_layers, int64_t vocab);
// Random bf16 weights with an expert-popularity bias calibrated so token routing touches about
// as many experts per 32-token block as LLaDA2.0-mini (paper: 69.5).
MoeDlm make_synthetic_model(const ModelConfig& c, uint64_t seed);
// The synthetic model's router on one MoE layer (f32 weights and the popularity bias; needs the
// bias buffer): the microbenchmarks reuse it.
void init_synthetic_router(moe::MoeBlockImpl& blk);

std::vector<GenBenchRow> run_generate_bench(const GenBenchParams& p);

nlohmann::json to_json(const std::vector<GenBenchRow>& rows);
// ms per forward with the MoE part's weight bytes streamed at the run's read bandwidth and every
// other part as measured (0 without a measured bandwidth): the ceiling of a faster expert kernel.
double step_ms_at_moe_floor(const GenBenchRow& r);
std::string to_markdown(const std::vector<GenBenchRow>& rows, const GenBenchParams& p);

}  // namespace ecdlm::bench
