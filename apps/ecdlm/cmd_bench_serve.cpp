// `ecdlm bench serve`: streaming HTTP clients against the server in-process (src/ecdlm/serve/bench_serve.h).
#include <iostream>

#include "commands.h"
#include "ecdlm/serve/bench_serve.h"
#include "ecdlm/util/error.h"
#include "ecdlm/util/fs.h"
#include "ecdlm/util/log.h"
#include "ecdlm/util/strings.h"

namespace ecdlm::cli {

void register_bench_serve(CLI::App* bench) {
  auto* sub = bench->add_subcommand(
      "serve", "Continuous batching under load: 1, 2, 4, 8, 16 concurrent streaming clients against `ecdlm serve` "
               "in-process (aggregate tokens/s, time to first block, p50/p99 latency; token and block routing)");
  struct Args {
    serve::ServeBenchParams p;
    std::string out_md, out_json;
    bool json = false, no_synthetic = false;
  };
  auto a = std::make_shared<Args>();
  sub->add_flag("--quick", a->p.quick,
                "Small run (CI smoke): 1, 2 and 4 clients, 4 requests, 32 tokens, a 1-MoE-layer synthetic model "
                "(each unless given by its flag)");
  sub->add_option("-m,--model", a->p.model_dir,
                  "Also a model directory with its tokenizer (token routing, or the --routing list when given)");
  sub->add_option("--dtype", a->p.dtypes,
                  "Weight dtype of the -m model: f32, bf16, or f32,bf16 for one run each (default: its stored dtype, "
                  "as `ecdlm serve`; the synthetic model is bf16)")
      ->delimiter(',')
      ->check(CLI::IsMember({"f32", "bf16"}));
  sub->add_option("--synth-weights", a->p.synth_weights,
                  "Weights of the synthetic model, one run each: bf16, q8, q4, q4s (comma list; packed as convert "
                  "--quantize does by default and served as a quantized checkpoint is)")
      ->delimiter(',')
      ->capture_default_str();
  sub->add_option("--clients", a->p.clients, "Concurrency levels (the first must be 1)")->delimiter(',');
  auto* routing = sub->add_option("--routing", a->p.routings,
                                  "Routing policies, one run each (token, block; default: both for the synthetic "
                                  "model, token for -m)")
                      ->delimiter(',');
  sub->add_option("--requests", a->p.requests, "Requests per level")->capture_default_str();
  sub->add_option("--max-tokens", a->p.max_tokens, "Tokens per request")->capture_default_str();
  sub->add_option("--steps", a->p.steps, "Denoising steps per block")->capture_default_str();
  sub->add_option("--temperature", a->p.temperature,
                  "Sampling temperature of every request (0 = greedy; greedy decoding of the synthetic model's "
                  "random weights repeats one token and touches far fewer experts than a real model)")
      ->check(Finite)->check(CLI::Range(0.0, 2.0))  // the server's range for `temperature`
      ->capture_default_str();
  sub->add_option("--max-batch", a->p.max_batch, "Server --max-batch")->capture_default_str();
  sub->add_option("--synth-moe-layers", a->p.synth_moe_layers, "MoE layers of the synthetic model")->capture_default_str();
  sub->add_flag("--no-synthetic", a->no_synthetic, "Only the -m model (no synthetic LLaDA2-shaped model)");
  sub->add_flag("--json", a->json, "Print the rows as JSON instead of the table");
  sub->add_option("--out-md", a->out_md, "Write the markdown table here");
  sub->add_option("--out-json", a->out_json, "Write the rows as JSON here");
  set_runner(sub, [a, sub, routing]() {
    auto p = a->p;
    p.synthetic = !a->no_synthetic;
    if (routing->count() > 0) p.model_routings = p.routings;
    const auto given = [&](const char* flag) { return sub->count(flag) > 0; };
    if (!p.synthetic && given("--synth-moe-layers"))
      fail("", "--synth-moe-layers", "applies to the synthetic model, and --no-synthetic drops it", "drop one of the two");
    if (p.quick) {  // its sizes for the flags not given
      if (!given("--clients")) p.clients = {1, 2, 4};
      if (!given("--requests")) p.requests = 4;
      if (!given("--max-tokens")) p.max_tokens = 32;
      if (!given("--synth-moe-layers")) p.synth_moe_layers = 1;
    }
    LOG_INFO("bench serve: clients " << p.clients.size() << " levels, " << p.requests << " requests each, max_tokens "
                                     << p.max_tokens << ", block " << p.block_length << ", steps " << p.steps
                                     << ", max batch " << p.max_batch << ", synthetic MoE layers " << p.synth_moe_layers
                                     << " (" << join(p.synth_weights) << ")"
                                     << ", routing " << join(p.routings) << ", model '" << p.model_dir << "'"
                                     << (p.model_dir.empty() ? "" : " (routing " + join(p.model_routings) + ")"));
    const auto rows = serve::run_serve_bench(p);
    const auto md = serve::to_markdown(rows, p);
    if (!a->out_md.empty()) write_file_atomic(a->out_md, md);
    const auto js = serve::to_json(rows).dump(2) + "\n";
    if (!a->out_json.empty()) write_file_atomic(a->out_json, js);
    std::cout << (a->json ? js : md);
    return 0;
  });
}

}  // namespace ecdlm::cli
