// `ecdlm generate`: LLaDA semi-autoregressive low-confidence remasking from a prompt.
#include <unistd.h>

#include <algorithm>
#include <iostream>
#include <memory>
#include <sstream>

#include "commands.h"
#include "ecdlm/generate/decoder.h"
#include "ecdlm/model/checkpoint.h"
#include "ecdlm/text/tokenizer.h"
#include "ecdlm/util/error.h"
#include "ecdlm/util/log.h"
#include "ecdlm/util/progress.h"

namespace ecdlm::cli {
namespace {

struct GenerateOptions {
  std::string model_dir, prompt;
  gen::DecodeParams p;
  int64_t num_samples = 1;
  bool ignore_eos = false, json = false, canvas = false;
};

void flag_error(const std::string& flag, const std::string& problem, const std::string& fix) {
  throw UserError(format_error("", flag, problem, fix));
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

// The generated part of one row with runs of real tokens decoded and each MASK shown as ░.
std::string render_canvas(const text::Tokenizer& tok, const torch::Tensor& row_G, int64_t mask) {
  std::string out;
  std::vector<int32_t> run;
  auto flush = [&] {
    if (!run.empty()) out += tok.decode(run);
    run.clear();
  };
  auto acc = row_G.accessor<int64_t, 1>();
  for (int64_t j = 0; j < row_G.size(0); ++j) {
    if (acc[j] == mask) {
      flush();
      out += "\u2591";
    } else {
      run.push_back(static_cast<int32_t>(acc[j]));
    }
  }
  flush();
  return out;
}

int run_generate(GenerateOptions o) {
  // Unset (0) block length / steps follow the generation length: blocks of 32, one token a step.
  if (o.p.block_length == 0) o.p.block_length = std::min<int64_t>(32, o.p.gen_length);
  if (o.p.steps == 0) o.p.steps = o.p.gen_length;
  validate(o);
  auto tok = text::load_tokenizer(o.model_dir);
  auto model = load_model(o.model_dir);
  const auto& cfg = model->config();
  if (cfg.mask_token_id < 0)
    throw UserError(format_error(o.model_dir + "/config.json", "mask_token_id",
                                 "the model has no mask token id",
                                 "set mask_token_id (the tokenizer's is " +
                                     std::to_string(tok->mask_id()) + ")"));
  if (tok->mask_id() != cfg.mask_token_id)
    LOG_WARN("tokenizer mask id " << tok->mask_id() << " != config mask_token_id "
                                  << cfg.mask_token_id << "; using the config's");
  if (tok->vocab_size() > cfg.vocab_size)
    throw UserError(format_error(o.model_dir, "vocab_size",
                                 "tokenizer has " + std::to_string(tok->vocab_size()) +
                                     " pieces but the model only " + std::to_string(cfg.vocab_size),
                                 "use the tokenizer the model was trained with"));

  std::vector<int64_t> ids;
  for (int32_t id : tok->encode(o.prompt)) ids.push_back(id);
  const auto P = static_cast<int64_t>(ids.size());
  auto prompt_BP = torch::tensor(ids, torch::kInt64).view({1, P}).repeat({o.num_samples, 1});
  if (P + o.p.gen_length > cfg.max_position_embeddings)
    LOG_WARN("prompt (" << P << ") + generation (" << o.p.gen_length
                        << ") exceeds max_position_embeddings " << cfg.max_position_embeddings);

  gen::DecodeParams p = o.p;
  p.stop_at_eos = !o.ignore_eos;
  const int64_t steps_per_block = p.steps / (p.gen_length / p.block_length);
  LOG_INFO("generate: model " << o.model_dir << " (" << to_string(cfg.router_type) << ", "
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
                                   << cfg.mask_token_id << ", eos id " << cfg.eos_token_id);

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
      for (int64_t r = 0; r < s.x_BL->size(0); ++r)
        os << render_canvas(*tok, (*s.x_BL)[r].narrow(0, P, p.gen_length), cfg.mask_token_id)
           << "\n";
      std::cerr << os.str() << std::flush;
    }
    return true;
  };
  auto res = gen::llada_generate(model, prompt_BP, p, cb);
  bar.finish();
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
    texts.push_back(tok->decode(body));
    tokens.push_back(std::move(kept));
  }
  if (o.json) {
    nlohmann::json j;
    j["samples"] = nlohmann::json::array();
    for (size_t i = 0; i < texts.size(); ++i)
      j["samples"].push_back({{"text", texts[i]}, {"tokens", tokens[i]}});
    j["prompt_tokens"] = ids;
    j["forwards"] = res.forwards;
    j["seconds"] = res.seconds;
    j["tokens_per_s"] = tps;
    j["forward_ms"] = res.forward_ms;
    std::cout << j.dump(2) << "\n";
    return 0;
  }
  for (size_t i = 0; i < texts.size(); ++i) {
    if (texts.size() > 1) std::cout << "=== sample " << i + 1 << " ===\n";
    std::cout << texts[i] << "\n";
  }
  return 0;
}

}  // namespace

void register_generate(CLI::App& app) {
  auto* sub = app.add_subcommand(
      "generate", "Generate text with a masked-diffusion model (LLaDA semi-autoregressive "
                  "low-confidence remasking)");
  auto o = std::make_shared<GenerateOptions>();
  auto& p = o->p;
  sub->add_option("-m,--model", o->model_dir,
                  "Model directory (config.json, model.safetensors, tokenizer.model)")
      ->required();
  sub->add_option("-p,--prompt", o->prompt, "Prompt text (default: empty, all masks)");
  sub->add_option("-n,--gen-length", p.gen_length, "Tokens to generate")->capture_default_str();
  p.block_length = 0;
  p.steps = 0;
  sub->add_option("--diffusion-block-length", p.block_length,
                  "Semi-autoregressive block length, divides --gen-length (default: 32, or the "
                  "gen length if shorter)");
  sub->add_option("--diffusion-steps", p.steps,
                  "Denoising steps in total, a multiple of the number of blocks (default: the gen "
                  "length, one token per step)");
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
                "Print {samples:[{text,tokens}], forwards, seconds, tokens_per_s, forward_ms}");
  sub->add_flag("--canvas", o->canvas,
                "Redraw the canvas on stderr after every step (masks as \u2591)");
  set_runner(sub, [o]() { return run_generate(*o); });
}

}  // namespace ecdlm::cli
