// `ecdlm generate`: masked-diffusion decoding from a prompt. Decoders: LLaDA semi-autoregressive
// low-confidence remasking (bidirectional models, ecdlm's own), LLaDA2 threshold block decoding
// with the exact KV cache (block-causal LLaDA2 checkpoints), Fast-dLLM threshold/factor rules.
// --chat wraps the prompt in the LLaDA2 chat template and stops at <|role_end|> / EOS / pad.
#include <atomic>
#include <csignal>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <iostream>
#include <memory>
#include <sstream>

#include "commands.h"
#include "ecdlm/generate/decoder.h"
#include "ecdlm/generate/threshold.h"
#include "inference_opts.h"
#include "ecdlm/model/checkpoint.h"
#include "ecdlm/model/model_dir.h"
#include "ecdlm/text/canvas.h"
#include "ecdlm/text/chat.h"
#include "ecdlm/text/tokenizer.h"
#include "ecdlm/util/error.h"
#include "ecdlm/util/log.h"
#include "ecdlm/util/profile.h"
#include "ecdlm/util/progress.h"

namespace ecdlm::cli {
namespace {

struct GenerateOptions {
  std::string model_dir, prompt, prompt_ids, tokenizer, decoder = "auto", system;
  gen::DecodeParams p;
  gen::ThresholdParams tp;
  std::string rule = "llada2", confidence = "prob", kv_cache = "true";
  RoutingFlags routing;
  int64_t num_samples = 1, mask_id = -1;
  bool ignore_eos = false, json = false, canvas = false, chat = false;
  std::string chat_text;              // --chat: the rendered template
  std::vector<int64_t> stop_ids;      // --chat: ids that end the answer (role_end, eos, pad)
  CLI::App* sub = nullptr;
  bool given(const std::string& flag) const { return sub->get_option(flag)->count() > 0; }
};

void flag_error(const std::string& flag, const std::string& problem, const std::string& fix) {
  fail("", flag, problem, fix);
}

void validate(const GenerateOptions& o) {
  const auto& p = o.p;
  if (p.gen_length <= 0) flag_error("--gen-length", "must be > 0", "pass e.g. -n 128");
  if (p.block_length <= 0)
    flag_error("--diffusion-block-length", "must be > 0", "pass e.g. --diffusion-block-length 32");
  if (p.gen_length % p.block_length != 0)
    flag_error("--gen-length", std::to_string(p.gen_length) + " is not a multiple of "
                                   "--diffusion-block-length " + std::to_string(p.block_length),
               "use a multiple, e.g. -n " +
                   std::to_string((p.gen_length / p.block_length + 1) * p.block_length));
  const int64_t blocks = p.gen_length / p.block_length;
  if (p.steps <= 0 || p.steps % blocks != 0)
    flag_error("--diffusion-steps",
               std::to_string(p.steps) + " is not a positive multiple of the number of blocks " +
                   std::to_string(blocks) + " (= gen length / block length)",
               "use e.g. --diffusion-steps " + std::to_string(p.gen_length));
  if (p.steps > p.gen_length)
    flag_error("--diffusion-steps",
               std::to_string(p.steps) + " exceeds --gen-length " + std::to_string(p.gen_length) +
                   " (steps would commit nothing)",
               "use at most one step per generated token");
  if (p.temperature < 0) flag_error("--temperature", "must be >= 0", "0 = greedy");
  if (p.top_k < 0) flag_error("--top-k", "must be >= 0", "0 = off");
  if (!(p.top_p > 0 && p.top_p <= 1)) flag_error("--top-p", "must be in (0, 1]", "1 = off");
  if (p.cfg_scale < 0) flag_error("--cfg-scale", "must be >= 0", "0 = off");
  if (p.block_causal < 0) flag_error("--block-causal", "must be >= 0", "0 = bidirectional");
  if (o.num_samples < 1) flag_error("--num-samples", "must be >= 1", "");
}

// Flag combinations that cannot work: a flag the chosen decoder would ignore (an error rather than a
// silent no-op), and --chat / --system misuse.
void check_flag_combinations(const GenerateOptions& o, const std::string& decoder) {
  if (decoder == "llada") {
    for (const char* f : {"--diffusion-threshold", "--diffusion-factor", "--diffusion-minimal-topk",
                          "--diffusion-confidence", "--diffusion-eos-early-stop", "--kv-cache", "--eos-id"})
      if (o.given(f))
        flag_error(f, "is a threshold-decoder setting and --decoder llada does not use it",
                   "use --decoder llada2 or fast-dllm, or drop " + std::string(f));
  } else {
    for (const char* f : {"--diffusion-remasking", "--cfg-scale", "--block-causal"})
      if (o.given(f))
        flag_error(f, "is a --decoder llada setting and --decoder " + decoder + " does not use it",
                   "use --decoder llada, or drop " + std::string(f));
  }
  if (o.chat && o.given("--prompt-ids"))
    flag_error("--prompt-ids", "conflicts with --chat (the template is applied to text)", "pass the message with -p");
  if (o.chat && o.prompt.empty())
    flag_error("--prompt", "is empty", "--chat needs the user's message: pass -p \"...\"");
  if (o.given("--system") && !o.chat)
    flag_error("--system", "only applies to --chat", "add --chat, or drop --system");
  if (o.ignore_eos)
    for (const char* f : {"--eos-id", "--diffusion-eos-early-stop"})
      if (o.given(f)) flag_error(f, "conflicts with --ignore-eos (no stop id at all)", "drop one of the two");
}

// Generated ids that the tokenizer lacks (a model vocabulary padded past it) are left out of the
// text, as HF's decode does; said once per process, so the missing text is not a mystery.
void warn_missing_ids(const text::Tokenizer& tok, const std::vector<int32_t>& ids) {
  static bool said = false;
  if (said) return;
  const int64_t n = text::count_missing_ids(tok, ids);
  if (n == 0) return;
  said = true;
  LOG_WARN("generate: " << n << " generated id(s) have no token in the tokenizer (" << tok.vocab_size()
                        << " pieces): left out of the text, as Hugging Face's decode does (--json lists every id)");
}

bool has_tokenizer_file(const std::string& dir) {
  std::error_code ec;
  for (const char* f : {"tokenizer.json", "vocab.json", "tokenizer.model"})
    if (std::filesystem::exists(std::filesystem::path(dir) / f, ec)) return true;
  return false;
}

// --chat: renders the LLaDA2 template around -p (and --system) and sets the stop ids.
std::vector<int64_t> chat_prompt(GenerateOptions& o, const text::Tokenizer& tok, const ModelConfig& cfg) {
  if (!text::is_llada2_chat_tokenizer(tok))
    flag_error("--chat", "the tokenizer (" + (o.tokenizer.empty() ? o.model_dir : o.tokenizer) +
                             ") has no <role>, </role> and <|role_end|> tokens, so it cannot encode the LLaDA2 chat template",
               "use a LLaDA2 checkpoint with its tokenizer.json (or pass --tokenizer), or drop --chat to continue "
               "plain text");
  std::vector<text::ChatMessage> messages;
  if (!o.system.empty()) messages.push_back({"system", o.system});
  messages.push_back({"user", o.prompt});
  o.chat_text = text::apply_llada2_chat(messages, /*add_generation_prompt=*/true);
  std::vector<int64_t> ids;
  for (int32_t id : tok.encode(o.chat_text, /*add_special_tokens=*/false)) ids.push_back(id);  // as apply_chat_template
  for (int32_t id : text::llada2_stop_ids(tok, o.model_dir, cfg.vocab_size)) o.stop_ids.push_back(id);
  if (o.tp.eos_id >= 0 && std::find(o.stop_ids.begin(), o.stop_ids.end(), o.tp.eos_id) == o.stop_ids.end())
    o.stop_ids.push_back(o.tp.eos_id);
  std::ostringstream os;
  for (size_t i = 0; i < o.stop_ids.size(); ++i) os << (i ? "," : "") << o.stop_ids[i];
  LOG_INFO("generate: chat template, " << ids.size() << " prompt tokens" << (o.system.empty() ? "" : " (with system turn)")
                                       << ", stop ids " << os.str());
  return ids;
}

// Cuts a generation at its first stop id; `body` gets the tokens before it, `kept` up to and including it.
void cut_at_stop(const std::vector<int64_t>& stops, std::vector<int32_t>& body, std::vector<int64_t>& kept) {
  for (size_t j = 0; j < body.size(); ++j)
    if (std::find(stops.begin(), stops.end(), body[j]) != stops.end()) {
      body.resize(j);
      kept.resize(std::min(kept.size(), j + 1));
      return;
    }
}

std::string resolve_decoder(const GenerateOptions& o, const ModelConfig& cfg) {
  if (o.decoder != "auto") return o.decoder;
  // LLaDA2 checkpoints are block-causal and decode by threshold; ecdlm's own models and
  // LLaDA-MoE are bidirectional.
  return trained_bidirectional(cfg) ? "llada" : "llada2";
}

// What the run decided before loading the model, for the logs and --json.
struct Decided {
  std::string decoder, dtype, routing_source;
  moe::InferenceRouting routing;
};

int run_threshold(GenerateOptions& o, MoeDlm& model, const text::Tokenizer* tok, const std::vector<int64_t>& ids,
                  const Decided& d);

// Ctrl-C cancels at the next step: the decoders return what they have, which is printed (masks
// shown) and the command exits 130. A second Ctrl-C kills as usual.
std::atomic<bool> g_interrupted{false};
extern "C" void on_sigint(int) {
  g_interrupted.store(true);
  std::signal(SIGINT, SIG_DFL);
}

int run_generate(GenerateOptions o) {
  std::signal(SIGINT, on_sigint);
  // Everything the flags and the directory decide is checked before the (slow) model load.
  const auto cfg = ModelConfig::load(o.model_dir);
  Decided d;
  d.decoder = resolve_decoder(o, cfg);
  const std::string& decoder = d.decoder;
  check_flag_combinations(o, decoder);
  // 0 picks the decoder's default; a negative count is a mistake, not a default.
  if (o.p.block_length < 0) flag_error("--diffusion-block-length", "must be >= 0 (0 = default)", "e.g. 32");
  if (o.p.steps < 0) flag_error("--diffusion-steps", "must be >= 0 (0 = default)", "e.g. 32");
  if (decoder == "llada") {
    // Unset (0) block length / steps follow the generation length: blocks of 32, one token a step.
    if (o.p.block_length == 0) o.p.block_length = std::min<int64_t>(32, o.p.gen_length);
    if (o.p.steps == 0) o.p.steps = o.p.gen_length;
    validate(o);
  }
  const bool by_ids = o.given("--prompt-ids");
  if (by_ids && !o.prompt.empty())
    flag_error("--prompt-ids", "given together with --prompt", "pass one of them");
  // llada prints text and --canvas draws it: with --prompt-ids they take the directory's tokenizer.
  const bool need_tok = !by_ids || decoder == "llada" || o.canvas;
  std::unique_ptr<text::Tokenizer> tok;
  if (o.tokenizer.empty() && need_tok && !has_tokenizer_file(o.model_dir)) {
    if (o.chat)
      flag_error("--chat", "needs the model's tokenizer, and " + o.model_dir + " has none",
                 "copy LLaDA2's tokenizer.json (and tokenizer_config.json) into the model directory, or pass --tokenizer");
    if (by_ids)
      flag_error("--tokenizer", (o.canvas ? std::string("--canvas") : "--decoder llada") + " prints text, and " +
                                    o.model_dir + " has no tokenizer (tokenizer.json, vocab.json or tokenizer.model)",
                 "pass --tokenizer FILE, or use --decoder llada2 (prints the ids)");
  }
  if (need_tok || !o.tokenizer.empty()) tok = text::load_tokenizer(o.tokenizer.empty() ? o.model_dir : o.tokenizer);
  if (tok) check_tokenizer_fits(*tok, cfg, o.tokenizer.empty() ? o.model_dir : o.tokenizer);
  const auto mask_found = require_mask_id(o.model_dir, cfg, tok.get(), o.mask_id);
  const int64_t mask = mask_found.id;
  if (tok && cfg.mask_token_id >= 0 && tok->mask_id() != cfg.mask_token_id)
    LOG_WARN("tokenizer mask id " << tok->mask_id() << " != config mask_token_id " << cfg.mask_token_id
                                  << "; using the config's");
  LOG_INFO("generate: mask id " << mask << " (" << mask_found.source << ")");
  std::vector<int64_t> ids;
  if (by_ids) {
    ids = parse_ids(o.prompt_ids, "--prompt-ids");
  } else if (o.chat) {
    ids = chat_prompt(o, *tok, cfg);
  } else {
    for (int32_t id : tok->encode(o.prompt)) ids.push_back(id);
  }
  for (auto id : ids)
    if (id >= cfg.vocab_size)
      flag_error(by_ids ? "--prompt-ids" : "--tokenizer", "token id " + std::to_string(id) +
                     " is outside the model's vocabulary (" + std::to_string(cfg.vocab_size) + ")",
                 "use ids of this model's tokenizer");
  if (decoder != "llada" && ids.empty())
    flag_error("--prompt", "is empty", "threshold decoding continues a prompt: pass -p TEXT");
  const auto P = static_cast<int64_t>(ids.size());
  if (decoder == "llada" && P + o.p.gen_length > cfg.max_position_embeddings)
    flag_error("--gen-length", "prompt (" + std::to_string(P) + " tokens) + generation (" +
                                   std::to_string(o.p.gen_length) + ") exceeds the model's context of " +
                                   std::to_string(cfg.max_position_embeddings) + " (max_position_embeddings)",
               "shorten the prompt or lower --gen-length");
  d.routing = o.routing.resolve(cfg);
  d.routing_source = o.routing.policy_source(cfg);

  auto model = load_for_routing(o.model_dir, o.routing, nullptr, &d.dtype);
  if (decoder != "llada") {
    o.tp.mask_id = mask;
    return run_threshold(o, model, tok.get(), ids, d);
  }
  o.p.mask_id = mask;
  o.p.routing = d.routing;
  auto prompt_BP = torch::tensor(ids, torch::kInt64).view({1, P}).repeat({o.num_samples, 1});

  gen::DecodeParams p = o.p;
  p.stop_at_eos = !o.ignore_eos;
  const int64_t steps_per_block = p.steps / (p.gen_length / p.block_length);
  LOG_INFO("generate: model " << o.model_dir << " (" << to_string(model->config().router_type) << ", "
                              << cfg.num_hidden_layers << " layers, vocab " << cfg.vocab_size
                              << "), prompt " << P << " tokens, samples " << o.num_samples);
  LOG_INFO("generate: gen_length " << p.gen_length << ", block_length " << p.block_length
                                   << ", steps " << p.steps << " (" << steps_per_block
                                   << " per block), remasking " << p.remasking << ", temperature "
                                   << p.temperature << ", top_k " << p.top_k << ", top_p "
                                   << p.top_p << ", cfg_scale " << p.cfg_scale << ", attention "
                                   << (p.block_causal > 0
                                           ? "block-causal " + std::to_string(p.block_causal)
                                           : std::string("bidirectional"))
                                   << ", seed " << p.seed << ", stop_at_eos "
                                   << (p.stop_at_eos ? "yes" : "no") << ", mask id "
                                   << mask << ", eos id " << cfg.eos_token_id << ", routing "
                                   << moe::routing_policy_name(p.routing.policy));

  if (o.canvas || log_level() >= LogLevel::kWarn) ProgressBar::set_enabled(false);
  ProgressBar bar("generate", p.steps, "tok");
  const bool tty = ::isatty(2);
  int64_t committed = 0;
  auto cb = [&](const gen::StepInfo& s) {
    committed += s.committed * o.num_samples;
    bar.update(s.step + 1, "block " + std::to_string(s.block + 1), static_cast<double>(committed));
    if (o.canvas) {
      std::ostringstream os;
      if (tty) os << "\033[H\033[2J";  // redraw in place
      os << "[step " << s.step + 1 << "/" << s.total_steps << ", block " << s.block + 1 << "]\n";
      for (int64_t r = 0; r < s.x_BL->size(0); ++r) {
        const auto row_G = (*s.x_BL)[r].narrow(0, P, p.gen_length).contiguous();
        const auto* ids_G = row_G.data_ptr<int64_t>();
        os << text::render_canvas(*tok, std::vector<int64_t>(ids_G, ids_G + row_G.numel()), mask) << "\n";
      }
      std::cerr << os.str() << std::flush;
    }
    return !g_interrupted.load();
  };
  auto res = gen::llada_generate(model, prompt_BP, p, cb);
  bar.finish();
  if (res.cancelled) LOG_WARN("generate: interrupted; printing the partial canvas");
  const double tps = res.seconds > 0 ? static_cast<double>(committed) / res.seconds : 0.0;
  LOG_INFO("generate: " << res.forwards << " forwards in " << res.seconds << " s ("
                        << committed << " tokens, " << tps << " tokens/s)");

  std::vector<std::string> texts;
  std::vector<std::vector<int64_t>> tokens;
  auto out_acc = res.tokens_BG.accessor<int64_t, 2>();
  for (int64_t r = 0; r < o.num_samples; ++r) {
    const int64_t len = res.lengths[static_cast<size_t>(r)];
    auto row = out_acc[r];
    std::vector<int32_t> body;
    std::vector<int64_t> kept;  // the generation up to and including the first EOS
    for (int64_t j = 0; j < p.gen_length; ++j) {
      const int64_t t = row[j];
      if (j < len) body.push_back(static_cast<int32_t>(t));
      if (j <= len || !p.stop_at_eos) kept.push_back(t);
    }
    if (p.stop_at_eos) cut_at_stop(o.stop_ids, body, kept);
    warn_missing_ids(*tok, body);
    texts.push_back(tok->decode(body));
    tokens.push_back(std::move(kept));
  }
  if (o.json) {
    nlohmann::json j;
    j["samples"] = nlohmann::json::array();
    for (size_t i = 0; i < texts.size(); ++i)
      j["samples"].push_back({{"text", texts[i]}, {"tokens", tokens[i]}});
    j["prompt_tokens"] = ids;
    if (o.chat) j["chat"] = {{"template", o.chat_text}, {"stop_ids", o.stop_ids}};
    j["decoder"] = decoder;
    j["routing"] = moe::routing_policy_name(p.routing.policy);
    j["routing_source"] = d.routing_source;
    j["dtype"] = d.dtype;
    j["forwards"] = res.forwards;
    j["seconds"] = res.seconds;
    j["tokens_per_s"] = tps;
    j["forward_ms"] = res.forward_ms;
    j["cancelled"] = res.cancelled;
    std::cout << j.dump(2) << "\n";
    return res.cancelled ? 130 : 0;
  }
  for (size_t i = 0; i < texts.size(); ++i) {
    if (texts.size() > 1) std::cout << "=== sample " << i + 1 << " ===\n";
    std::cout << texts[i] << "\n";
  }
  return res.cancelled ? 130 : 0;
}


int run_threshold(GenerateOptions& o, MoeDlm& model, const text::Tokenizer* tok, const std::vector<int64_t>& ids,
                  const Decided& d) {
  const auto& cfg = model->config();
  const std::string& decoder = d.decoder;
  auto& tp = o.tp;
  tp.gen_length = o.p.gen_length;
  tp.block_length = o.p.block_length > 0 ? o.p.block_length : 32;
  tp.steps = o.p.steps > 0 ? o.p.steps : tp.block_length;
  tp.temperature = o.p.temperature;
  tp.top_k = o.p.top_k;
  tp.top_p = o.p.top_p;
  tp.seed = o.p.seed;
  tp.stop_ids = o.stop_ids;
  if (decoder == "fast-dllm") {
    if (o.given("--diffusion-steps"))
      flag_error("--diffusion-steps", "conflicts with --decoder fast-dllm, which commits by threshold until a block is done",
                 "drop --diffusion-steps, or use --decoder llada2");
    tp.rule = o.given("--diffusion-factor") ? gen::ThresholdRule::kFastFactor : gen::ThresholdRule::kFastThreshold;
    if (o.given("--diffusion-factor") && o.given("--diffusion-threshold"))
      flag_error("--diffusion-factor", "conflicts with --diffusion-threshold (Fast-dLLM uses one rule)", "pass one");
    if (o.given("--diffusion-minimal-topk"))
      flag_error("--diffusion-minimal-topk", "is an llada2 setting (it caps the steps per block, which fast-dllm does not "
                 "schedule)", "drop it, or use --decoder llada2");
  } else if (decoder == "llada2") {
    tp.rule = gen::ThresholdRule::kLlada2;
    if (o.given("--diffusion-factor")) flag_error("--diffusion-factor", "is a Fast-dLLM setting", "use --decoder fast-dllm");
    if (tp.steps > tp.block_length)
      flag_error("--diffusion-steps", std::to_string(tp.steps) + " steps per block exceed the block length " +
                                          std::to_string(tp.block_length) + " (the extra steps would commit nothing)",
                 "use at most --diffusion-steps " + std::to_string(tp.block_length) + " (LLaDA2: 32 = the block length)");
  } else {
    flag_error("--decoder", "unknown decoder '" + decoder + "'", "use auto, llada, llada2 or fast-dllm");
  }
  tp.confidence = gen::parse_confidence(o.confidence);
  if (o.kv_cache != "true" && o.kv_cache != "false") flag_error("--kv-cache", "expects true or false", "");
  tp.kv_cache = o.kv_cache == "true";
  tp.routing = d.routing;
  if (o.ignore_eos) tp.eos_id = -2;
  // These decoders attend block-causally; a model trained bidirectionally never saw that mask.
  const bool approximate = trained_bidirectional(cfg);
  if (approximate)
    LOG_WARN("--decoder " << decoder << " on a bidirectionally trained model (" << (cfg.ecdlm_native ? "ecdlm's own" : "LLaDA-MoE")
                          << "): block-causal attention"
                          << (tp.kv_cache ? " with a prefix KV cache (earlier blocks are not re-read after later ones change)"
                                          : "")
                          << " is APPROXIMATE; --decoder llada decodes with the model's own bidirectional attention");
  LOG_INFO("generate: decoder " << decoder << " (rule " << o.rule << "), model " << o.model_dir << " ("
                                << to_string(cfg.router_type) << ", " << cfg.num_hidden_layers << " layers), prompt "
                                << ids.size() << " tokens, gen_length " << tp.gen_length << ", block " << tp.block_length
                                << ", steps " << tp.steps << ", threshold " << tp.threshold << ", factor " << tp.factor
                                << ", confidence " << o.confidence << ", temperature " << tp.temperature << ", top_k "
                                << tp.top_k << ", top_p " << tp.top_p << ", kv_cache " << o.kv_cache << ", routing "
                                << moe::routing_policy_name(tp.routing.policy)
                                << (tp.routing.policy == moe::RoutingPolicy::kBlock
                                        ? " (p " + std::to_string(tp.routing.block_top_p) + ", G " +
                                              std::to_string(tp.routing.block_min_experts) + ", chunk " +
                                              std::to_string(tp.routing.block_chunk) + ")"
                                        : std::string())
                                << ", eos_early_stop " << tp.eos_early_stop << ", seed " << tp.seed);
  if (o.canvas || log_level() >= LogLevel::kWarn) ProgressBar::set_enabled(false);
  prof::set_enabled(o.json);  // --json reports each forward's split (a few clock reads per forward)
  const int64_t blocks = (static_cast<int64_t>(ids.size()) + tp.gen_length + tp.block_length - 1) / tp.block_length -
                         static_cast<int64_t>(ids.size()) / tp.block_length;
  ProgressBar bar("generate", blocks, "tok");  // the samples decode as one batch, block by block
  int64_t committed = 0, done_blocks = 0, last_block = -1;
  auto cb = [&](const gen::StepInfo& s) {
    committed += s.committed;
    if (s.block != last_block) ++done_blocks, last_block = s.block;
    bar.update(done_blocks, "block " + std::to_string(s.block), static_cast<double>(committed));
    if (o.canvas && tok) {
      std::vector<int64_t> row(s.x_BL->data_ptr<int64_t>() + ids.size(), s.x_BL->data_ptr<int64_t>() + s.x_BL->size(1));
      std::cerr << (::isatty(2) ? "\033[H\033[2J" : "") << "[block " << s.block << ", step " << s.step << "]\n"
                << text::render_canvas(*tok, row, tp.mask_id) << "\n" << std::flush;
    }
    return !g_interrupted.load();
  };
  std::vector<std::vector<int64_t>> prompts(static_cast<size_t>(o.num_samples), ids);
  auto results = gen::threshold_generate_batch(model, prompts, tp, cb);
  bar.finish();
  if (g_interrupted.load()) LOG_WARN("generate: interrupted; printing what was decoded");
  // The decoder cut each output after its first stop token (EOS, or a --chat stop id): leave it out of the text.
  std::vector<int64_t> stops = o.stop_ids;
  stops.push_back(tp.eos_id >= 0 ? tp.eos_id : cfg.eos_token_id);
  nlohmann::json js = nlohmann::json::array();
  for (size_t i = 0; i < results.size(); ++i) {
    const auto& r = results[i];
    std::vector<int32_t> body(r.tokens.begin(), r.tokens.end());
    if (!o.ignore_eos && !body.empty() && std::find(stops.begin(), stops.end(), body.back()) != stops.end())
      body.pop_back();
    if (tok) warn_missing_ids(*tok, body);
    const std::string text = tok ? tok->decode(body) : std::string();
    const double tps = r.seconds > 0 ? static_cast<double>(r.tokens.size()) / r.seconds : 0.0;
    LOG_INFO("sample " << i << ": " << r.tokens.size() << " tokens, " << r.forwards << " denoising + "
                       << r.cache_forwards << " cache forwards (" << r.ride_along_appends
                       << " blocks appended in a denoising forward) in " << r.seconds << " s (" << tps
                       << " tokens/s), unique experts per layer per block " << r.avg_unique_experts_per_layer);
    if (o.json) {
      nlohmann::json pf = nlohmann::json::array();
      for (const auto& f : r.per_forward)
        pf.push_back({{"block", f.block}, {"step", f.step}, {"tokens_in", f.tokens_in}, {"committed", f.committed},
                      {"ms", f.ms}, {"unique_experts_per_layer", f.unique_experts_per_layer},
                      {"expert_bytes", f.expert_bytes}, {"attention_ms", f.attention_ms}, {"router_ms", f.router_ms},
                      {"experts_ms", f.experts_ms}, {"dense_ms", f.dense_ms}, {"head_ms", f.head_ms}});
      js.push_back({{"text", text}, {"tokens", r.tokens}, {"forwards", r.forwards}, {"cache_forwards", r.cache_forwards},
                    {"ride_along_appends", r.ride_along_appends},
                    {"seconds", r.seconds}, {"tokens_per_s", tps}, {"tokens_per_forward",
                     r.forwards ? static_cast<double>(r.tokens.size()) / static_cast<double>(r.forwards) : 0.0},
                    {"avg_unique_experts_per_layer", r.avg_unique_experts_per_layer}, {"eos_stopped", r.eos_stopped},
                    {"per_forward", pf}});
    } else {
      if (results.size() > 1) std::cout << "=== sample " << i + 1 << " ===\n";
      if (tok) {
        std::cout << text << "\n";
      } else {
        for (size_t j = 0; j < r.tokens.size(); ++j) std::cout << (j ? " " : "") << r.tokens[j];
        std::cout << "\n";
      }
    }
  }
  if (o.json) {
    nlohmann::json out = {{"decoder", decoder}, {"routing", moe::routing_policy_name(tp.routing.policy)},
                          {"routing_source", d.routing_source}, {"dtype", d.dtype},
                          {"model_attention", approximate ? "bidirectional" : "block-causal"},
                          {"approximate", approximate},
                          {"kv_cache", tp.kv_cache}, {"prompt_tokens", ids}, {"samples", js},
                          {"peak_rss_mb", prof::peak_rss_bytes() / 1048576.0}};
    if (o.chat) out["chat"] = {{"template", o.chat_text}, {"stop_ids", o.stop_ids}};
    out["cancelled"] = g_interrupted.load();
    std::cout << out.dump(2) << "\n";
  }
  return g_interrupted.load() ? 130 : 0;
}

}  // namespace

void register_generate(CLI::App& app) {
  auto* sub = app.add_subcommand(
      "generate", "Generate text with a masked-diffusion model (LLaDA semi-autoregressive low-confidence "
                  "remasking, LLaDA2 / Fast-dLLM threshold decoding; --chat for LLaDA2 chat models). A flag the "
                  "chosen decoder does not use is an error: --diffusion-threshold/-factor/-minimal-topk/-confidence/"
                  "-eos-early-stop, --kv-cache and --eos-id need llada2 or fast-dllm; --diffusion-remasking, "
                  "--cfg-scale and --block-causal need llada");
  auto o = std::make_shared<GenerateOptions>();
  auto& p = o->p;
  sub->add_option("-m,--model", o->model_dir,
                  "Model directory (config.json, model.safetensors, tokenizer.json or tokenizer.model)")
      ->required();
  sub->add_option("-p,--prompt", o->prompt,
                  "Prompt text (with --chat: the user's message). llada may leave it out (all masks); llada2, "
                  "fast-dllm and --chat need one");
  sub->add_flag("--chat", o->chat,
                "Wrap -p in the LLaDA2 chat template (<role>HUMAN</role>...<|role_end|><role>ASSISTANT</role>), "
                "stop at <|role_end|> and at the eos/pad ids of config.json, generation_config.json and the "
                "tokenizer, and print only the answer. Needs a tokenizer with those role tokens");
  sub->add_option("--system", o->system,
                  "With --chat: a system turn first (default: none; dInfer's benchmarks use "
                  "\"detailed thinking off\")");
  sub->add_option("-n,--gen-length", p.gen_length, "Tokens to generate")->capture_default_str();
  p.block_length = 0;
  p.steps = 0;
  sub->add_option("--diffusion-block-length", p.block_length,
                  "Block length (default 32). llada: divides --gen-length (default: the gen length if "
                  "shorter); llada2 / fast-dllm: blocks start at position 0, a multiple of --block-chunk "
                  "under --moe-routing block with the KV cache");
  sub->add_option("--diffusion-steps", p.steps,
                  "llada: steps in total, a multiple of the number of blocks and at most --gen-length "
                  "(default: the gen length, one token a step). llada2: steps per block, at most the block "
                  "length (default: the block length). fast-dllm: not allowed (it steps until a block is done)");
  sub->add_option("--diffusion-remasking", p.remasking,
                  "Which masked positions to commit first: low_confidence (p of the token), "
                  "random, margin (p1 - p2) or entropy (-H)")
      ->check(CLI::IsMember({"low_confidence", "random", "margin", "entropy"}))
      ->capture_default_str();
  sub->add_option("--temperature", p.temperature, "Gumbel-noise temperature (0 = greedy)")
      ->capture_default_str();
  sub->add_option("--top-k", p.top_k, "Keep the k most likely tokens (0 = off)")
      ->capture_default_str();
  sub->add_option("--top-p", p.top_p, "Nucleus filter (1 = off)")->capture_default_str();
  sub->add_option("--cfg-scale", p.cfg_scale,
                  "Classifier-free guidance scale (0 = off; doubles the forward batch)")
      ->capture_default_str();
  sub->add_option("--block-causal", p.block_causal,
                  "Block-causal attention with this block length, for models trained that way "
                  "(0 = bidirectional, as LLaDA)")
      ->capture_default_str();
  sub->add_option("-s,--seed", p.seed, "Sampling seed")->capture_default_str();
  sub->add_option("--num-samples", o->num_samples, "Samples, decoded together as one batch")
      ->capture_default_str();
  sub->add_flag("--ignore-eos", o->ignore_eos,
                "Keep generating after EOS and print everything (default: stop at the first EOS)");
  sub->add_flag("--json", o->json,
                "Print {samples:[{text,tokens}], forwards, seconds, tokens_per_s, forward_ms, routing, routing_source "
                "(flag, config or default), dtype}; llada2 / fast-dllm add approximate (true on a bidirectionally "
                "trained model: block-causal attention and the KV cache only approximate it)");
  sub->add_flag("--canvas", o->canvas,
                "Redraw the canvas on stderr after every step (masks as \u2591)");
  sub->add_option("--prompt-ids", o->prompt_ids, "Prompt as token ids (\"12,7,99\"), instead of -p");
  sub->add_option("--tokenizer", o->tokenizer, "Tokenizer file or directory (default: the model directory)");
  sub->add_option("--decoder", o->decoder,
                  "auto (llada2 for LLaDA2 checkpoints, else llada), llada, llada2 (threshold + top-n fallback), "
                  "fast-dllm (threshold or --diffusion-factor)")
      ->check(CLI::IsMember({"auto", "llada", "llada2", "fast-dllm"}))
      ->capture_default_str();
  sub->add_option("--diffusion-threshold", o->tp.threshold, "llada2 / fast-dllm: commit masked positions above this confidence")
      ->capture_default_str();
  sub->add_option("--diffusion-factor", o->tp.factor,
                  "fast-dllm factor rule f (thresholds 1 - f/(k+2)); not with --diffusion-threshold");
  sub->add_option("--diffusion-minimal-topk", o->tp.minimal_topk, "llada2: steps = min(steps, gen_length / this)")
      ->capture_default_str();
  sub->add_option("--diffusion-confidence", o->confidence, "llada2 / fast-dllm confidence: prob, margin, entropy, random")
      ->check(CLI::IsMember({"prob", "margin", "entropy", "random"}))
      ->capture_default_str();
  sub->add_flag("--diffusion-eos-early-stop", o->tp.eos_early_stop,
                "llada2 / fast-dllm: stop as soon as EOS is committed with nothing masked before it");
  sub->add_option("--kv-cache", o->kv_cache, "llada2 / fast-dllm: true|false (exact for block-causal models; "
                                             "on bidirectional ones, as LLaDA-MoE, an approximation, with a warning)")
      ->capture_default_str();
  sub->add_option("--eos-id", o->tp.eos_id,
                  "llada2 / fast-dllm: EOS token id (default: the config's eos_token_id, else pad_token_id); "
                  "with --chat one more stop id");
  sub->add_option("--mask-id", o->mask_id, "Mask token id (default: config.json's mask_token_id, else "
                                           "generation_config.json's, else the tokenizer's <|mask|>)");
  o->routing.add_to(sub);
  o->sub = sub;
  set_runner(sub, [o]() { return run_generate(*o); });
}

}  // namespace ecdlm::cli
