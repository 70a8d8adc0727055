// `ecdlm bench serve`: the server in-process on a free loopback port, driven by streaming HTTP
// clients of our own (cpp-httplib) at 1, 2, 4, 8 and 16 concurrent clients, under token and dMoE
// block routing, on the synthetic LLaDA2.0-mini-shaped model of `bench generate` (and a trained
// model directory when given). Every level runs the same requests (random prompts of several
// lengths, seeded, EOS ignored); the baseline is the same number of requests one after another.
#pragma once
#include <nlohmann/json.hpp>

#include <string>
#include <vector>

namespace ecdlm::serve {

struct ServeBenchParams {
  bool quick = false;
  std::string model_dir;                     // a model directory with a tokenizer ("" = synthetic only)
  // The -m model's weight dtypes, one benchmark each ("f32", "bf16"; empty: its stored dtype, as
  // `ecdlm serve` without --dtype). The synthetic model is bf16 only.
  std::vector<std::string> dtypes;
  bool synthetic = true;                     // also (first) the synthetic model
  // The synthetic model's weights, one benchmark each: "bf16", or "q8" / "q4" / "q4s" (packed as
  // `convert --quantize` packs by default, then run as `serve` runs a quantized checkpoint:
  // output-lane copies built at load where the kernel is AVX512-VNNI).
  std::vector<std::string> synth_weights = {"bf16"};
  std::vector<int64_t> clients = {1, 2, 4, 8, 16};
  std::vector<std::string> routings = {"token", "block"};  // the synthetic model's
  std::vector<std::string> model_routings = {"token"};     // the -m model's (--routing when given)
  int64_t requests = 16;                     // per level (each client takes requests / clients)
  int64_t synth_moe_layers = 3, synth_vocab = 32768;
  int64_t max_tokens = 64, block_length = 32, steps = 8;  // steps per block: 4 tokens per step
  int64_t max_batch = 16;
  // Sampled, as bench generate samples: greedy decoding of random weights repeats one token, and
  // its blocks then touch ~28 experts per layer instead of LLaDA2.0-mini's ~69 (spec gotcha 17).
  double temperature = 1.0;
  uint64_t seed = 7;
};

struct ServeBenchRow {
  std::string model, routing, dtype;  // dtype: the weights' ("f32" / "bf16")
  int64_t clients = 0, requests = 0, tokens = 0;
  double seconds = 0, tokens_per_s = 0, speedup = 0;  // speedup: tokens/s over 1 client
  double ttfb_p50_ms = 0, latency_p50_ms = 0, latency_p99_ms = 0;
  double batch_rows_mean = 0, step_ms = 0, unique_experts_per_block = 0;  // step_ms: mean batched step
  std::vector<double> part_ms;  // per step: prof::Part order (attention, router, experts, shared, dense, head)
};

std::vector<ServeBenchRow> run_serve_bench(const ServeBenchParams& p);
nlohmann::json to_json(const std::vector<ServeBenchRow>& rows);
std::string to_markdown(const std::vector<ServeBenchRow>& rows, const ServeBenchParams& p);

}  // namespace ecdlm::serve
