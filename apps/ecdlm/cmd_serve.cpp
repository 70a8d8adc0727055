// `ecdlm serve`: parses the flags, checks them before anything is bound or loaded, and starts the
// OpenAI-compatible server (src/ecdlm/serve/) with a loader for the model, tokenizer and defaults.
#include <cmath>
#include <filesystem>
#include <memory>
#include <sstream>

#include "commands.h"
#include "ecdlm/generate/threshold.h"
#include "ecdlm/model/model_dir.h"
#include "ecdlm/serve/server.h"
#include "ecdlm/text/chat.h"
#include "ecdlm/util/error.h"
#include "ecdlm/util/log.h"
#include "inference_opts.h"

namespace ecdlm::cli {
namespace {

struct ServeOptions {
  std::string model_dir, tokenizer, model_id, decoder = "llada2", confidence = "prob";
  serve::ServeParams sp;
  gen::ThresholdParams tp;
  RoutingFlags routing;
  int64_t max_n = 8, mask_id = -1;
  CLI::App* sub = nullptr;
  bool given(const std::string& flag) const { return sub->get_option(flag)->count() > 0; }
};

void flag_error(const std::string& flag, const std::string& problem, const std::string& fix) {
  fail("", flag, problem, fix);
}

void check_flags(ServeOptions& o) {
  auto& sp = o.sp;
  if (sp.port < 0 || sp.port > 65535) flag_error("--port", "must be in [0, 65535]", "0 picks a free port");
  if (sp.sched.max_batch < 1) flag_error("--max-batch", "must be >= 1", "e.g. 16");
  if (sp.sched.max_queue < 1) flag_error("--max-queue", "must be >= 1", "e.g. 64");
  if (o.max_n < 1) flag_error("--max-n", "must be >= 1", "e.g. 8");
  if (o.max_n > sp.sched.max_batch || o.max_n > sp.sched.max_queue)
    flag_error("--max-n", "exceeds --max-batch or --max-queue (a request's n rows join together)",
               "lower --max-n or raise --max-batch / --max-queue");
  if (sp.max_body_bytes < 1024) flag_error("--max-body", "must be >= 1024 bytes", "e.g. 1048576");
  if (!(sp.shutdown_timeout >= 0) || !std::isfinite(sp.shutdown_timeout))
    flag_error("--shutdown-timeout", "must be a finite number >= 0", "e.g. 30");
  if (sp.http_threads < 2) flag_error("--http-threads", "must be >= 2", "e.g. 64");
  if (o.tp.block_length <= 0) flag_error("--diffusion-block-length", "must be > 0", "LLaDA2 uses 32");
  if (o.tp.steps == 0) o.tp.steps = o.tp.block_length;
  if (o.decoder == "llada2") {
    o.tp.rule = gen::ThresholdRule::kLlada2;
    if (o.tp.steps > o.tp.block_length)
      flag_error("--diffusion-steps", "exceeds the block length", "use at most --diffusion-block-length steps");
  } else {
    o.tp.rule = gen::ThresholdRule::kFastThreshold;
  }
  o.tp.confidence = gen::parse_confidence(o.confidence);
  if (o.tp.gen_length < 1) flag_error("--gen-length", "must be >= 1", "the default max_tokens, e.g. 128");
}

serve::Loaded load(ServeOptions& o) {
  const auto cfg = ModelConfig::load(o.model_dir);
  const std::string tok_src = o.tokenizer.empty() ? o.model_dir : o.tokenizer;
  if (o.tokenizer.empty() && tokenizer_files(o.model_dir).empty())
    flag_error("--tokenizer", o.model_dir + " has no tokenizer (tokenizer.json, vocab.json or tokenizer.model); the server "
                                             "takes and returns text",
               "copy the model's tokenizer into the directory, or pass --tokenizer");
  serve::Loaded L;
  L.tok = text::load_tokenizer(tok_src);
  check_tokenizer_fits(*L.tok, cfg, tok_src);
  const auto mask = require_mask_id(o.model_dir, cfg, L.tok.get(), o.mask_id);
  auto& d = L.defaults;
  d.model_id = o.model_id.empty() ? std::filesystem::path(o.model_dir).lexically_normal().filename().string() : o.model_id;
  if (d.model_id.empty()) d.model_id = std::filesystem::path(o.model_dir).lexically_normal().parent_path().filename().string();
  d.max_n = o.max_n;
  d.params = o.tp;
  d.params.mask_id = mask.id;
  d.params.kv_cache = true;
  d.params.routing = o.routing.resolve(cfg, /*request_defaults=*/true);
  d.chat = text::is_llada2_chat_tokenizer(*L.tok);
  if (d.chat)
    for (int32_t id : text::llada2_stop_ids(*L.tok, o.model_dir, cfg.vocab_size)) d.chat_stop_ids.push_back(id);
  gen::validate_params(d.params, cfg, 1);  // flags against the model (block vs chunk, routing, ...)
  if (trained_bidirectional(cfg))
    LOG_WARN("serve: the model was trained with bidirectional attention: block-causal decoding with the KV cache only "
             "approximates it");
  std::ostringstream stops;
  for (size_t i = 0; i < d.chat_stop_ids.size(); ++i) stops << (i ? "," : "") << d.chat_stop_ids[i];
  const auto& p = d.params;
  LOG_INFO("serve: model " << o.model_dir << " as '" << d.model_id << "' (" << to_string(cfg.router_type) << ", "
                           << cfg.num_hidden_layers << " layers, vocab " << cfg.vocab_size << ", context "
                           << cfg.max_position_embeddings << "), mask id " << mask.id << " (" << mask.source
                           << "), chat template " << (d.chat ? "llada2, stop ids " + stops.str() : std::string("none")));
  LOG_INFO("serve: defaults: decoder " << o.decoder << ", max_tokens " << p.gen_length << ", block " << p.block_length
                                       << ", steps " << p.steps << ", threshold " << p.threshold << ", confidence "
                                       << o.confidence << ", temperature " << p.temperature << ", top_k " << p.top_k
                                       << ", top_p " << p.top_p << ", seed " << p.seed << ", eos_early_stop "
                                       << p.eos_early_stop << ", routing "
                                       << describe_routing(p.routing, cfg, o.routing.policy_source(cfg)));
  L.model = load_for_routing(o.model_dir, o.routing);
  // Batch invariance (a row's tokens alone = in a full batch) holds on our own fixed-order kernels only.
  if (o.routing.kernel == "torch" || o.routing.quant_kernel == "torch")
    LOG_WARN("serve: --kernel " << o.routing.kernel << " / --quant-kernel " << o.routing.quant_kernel
                                << ": these products round by the batch's row count, so a request's tokens may "
                                   "differ between running alone and beside others; the defaults (auto) do not");
  return L;
}

int run_serve(ServeOptions o) {
  check_flags(o);
  (void)ModelConfig::load(o.model_dir);  // a missing or broken directory fails before anything binds
  const auto& sp = o.sp;
  LOG_INFO("serve: host " << sp.host << ", port " << sp.port << (sp.port == 0 ? " (any free)" : "") << ", max batch "
                          << sp.sched.max_batch << " rows, max queue " << sp.sched.max_queue << " rows, max n " << o.max_n
                          << ", max body " << sp.max_body_bytes << " bytes, api key " << (sp.api_key.empty() ? "off" : "on")
                          << ", shutdown timeout " << sp.shutdown_timeout << " s, http threads " << sp.http_threads);
  if (sp.host != "127.0.0.1" && sp.host != "localhost" && sp.api_key.empty())
    LOG_WARN("serve: listening on " << sp.host << " without --api-key: anyone who reaches it can use the model");
  return serve::run_server(sp, [&o] { return load(o); });
}

}  // namespace

void register_serve(CLI::App& app) {
  auto* sub = app.add_subcommand(
      "serve", "OpenAI-compatible HTTP server with continuous batching: /v1/chat/completions, /v1/completions, "
               "/v1/models, /health, /metrics, and a live page at /. SIGINT / SIGTERM stop it gracefully");
  auto o = std::make_shared<ServeOptions>();
  auto& sp = o->sp;
  o->tp.gen_length = 128;
  o->tp.steps = 0;
  sub->add_option("-m,--model", o->model_dir, "Model directory (config.json, model.safetensors, tokenizer)")->required();
  sub->add_option("--tokenizer", o->tokenizer, "Tokenizer file or directory (default: the model directory)");
  sub->add_option("--model-id", o->model_id, "The model id clients send (default: the directory's name)");
  sub->add_option("--host", sp.host, "Address to bind (127.0.0.1: this machine only)")->capture_default_str();
  sub->add_option("--port", sp.port, "Port (0: any free one; the log and stdout say which)")->capture_default_str();
  sub->add_option("--max-batch", sp.sched.max_batch, "Rows (choices) decoding together at most")->capture_default_str();
  sub->add_option("--max-queue", sp.sched.max_queue, "Rows waiting at most; more get 429 with Retry-After")
      ->capture_default_str();
  sub->add_option("--max-n", o->max_n, "Largest n (choices) a request may ask for")->capture_default_str();
  sub->add_option("--max-body", sp.max_body_bytes, "Largest request body in bytes (larger: 413)")->capture_default_str();
  sub->add_option("--api-key", sp.api_key, "Require 'Authorization: Bearer KEY' on /v1/* (default: no key)");
  sub->add_option("--shutdown-timeout", sp.shutdown_timeout,
                  "Seconds SIGINT / SIGTERM waits for running requests before cancelling them")
      ->capture_default_str();
  sub->add_option("--http-threads", sp.http_threads, "Connections served at once (each stream holds one)")
      ->capture_default_str();
  sub->add_option("-n,--gen-length", o->tp.gen_length, "max_tokens when a request gives none (capped by the context)")
      ->capture_default_str();
  sub->add_option("--decoder", o->decoder, "llada2 (threshold + top-n fallback) or fast-dllm (threshold, top-1 floor)")
      ->check(CLI::IsMember({"llada2", "fast-dllm"}))
      ->capture_default_str();
  sub->add_option("--diffusion-block-length", o->tp.block_length, "Block length (request: ecdlm.block_length)")
      ->capture_default_str();
  sub->add_option("--diffusion-steps", o->tp.steps, "llada2: steps per block (default: the block length; ecdlm.steps)");
  sub->add_option("--diffusion-threshold", o->tp.threshold, "Commit masked positions above this confidence (ecdlm.threshold)")
      ->capture_default_str();
  sub->add_option("--diffusion-confidence", o->confidence, "prob, margin, entropy or random (ecdlm.confidence)")
      ->check(CLI::IsMember({"prob", "margin", "entropy", "random"}))
      ->capture_default_str();
  sub->add_flag("--diffusion-eos-early-stop", o->tp.eos_early_stop,
                "Stop a row once EOS is committed with nothing masked before it (ecdlm.eos_early_stop)");
  sub->add_option("--temperature", o->tp.temperature, "Default temperature (0 = greedy)")->capture_default_str();
  sub->add_option("--top-k", o->tp.top_k, "Default top-k (0 = off; ecdlm.top_k)")->capture_default_str();
  sub->add_option("--top-p", o->tp.top_p, "Default top-p (1 = off)")->capture_default_str();
  sub->add_option("-s,--seed", o->tp.seed, "Seed when a request gives none (choice i uses seed + i)")->capture_default_str();
  sub->add_option("--mask-id", o->mask_id, "Mask token id (default: config.json, generation_config.json, tokenizer)");
  o->routing.add_to(sub);
  o->sub = sub;
  set_runner(sub, [o]() { return run_serve(*o); });
}

}  // namespace ecdlm::cli
