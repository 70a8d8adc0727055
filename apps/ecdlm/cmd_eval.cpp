// ecdlm eval: ELBO perplexity on prepared validation shards with deterministic masks.
#include <iomanip>
#include <iostream>

#include "commands.h"
#include "inference_opts.h"
#include "ecdlm/data/batcher.h"
#include "ecdlm/data/shards.h"
#include "ecdlm/eval/elbo.h"
#include "ecdlm/model/checkpoint.h"
#include "ecdlm/util/error.h"
#include "ecdlm/util/log.h"
#include "ecdlm/util/progress.h"

namespace ecdlm::cli {
namespace {

struct EvalArgs {
  std::string model, data = "data/brown", split = "val", bf16 = "true";
  int64_t seq_len = 256, windows = 64, samples = 4, batch = 16;
  uint64_t seed = EvalParams{}.seed;
  std::vector<int64_t> bins = {4, 10};
  int64_t cloze_span = 0, cloze_positions = 1, block_length = 32;
  std::string mask_mode = "uniform";
  bool json = false;
  RoutingFlags routing;
};

int run(const EvalArgs& a) {
  if (a.bf16 != "true" && a.bf16 != "false") fail("", "--eval-bf16", "expects true or false", "");
  std::string dtype;
  auto model = load_for_routing(a.model, a.routing, nullptr, &dtype);
  if (model->config().mask_token_id < 0)
    fail(a.model + "/config.json", "mask_token_id", "the model has no mask token id (and no tokenizer with <|mask|>)",
         "add \"mask_token_id\" to config.json or put the model's tokenizer.json next to it");
  auto shard = data::TokenShard::open(a.data, a.split);
  if (shard.vocab_size() != model->config().vocab_size)
    fail(a.data, "vocab_size",
         "data vocabulary (" + std::to_string(shard.vocab_size()) + ") differs from the model's (" +
             std::to_string(model->config().vocab_size) + ")",
         "evaluate on data prepared with the model's tokenizer");
  data::EvalWindows windows(shard, a.seq_len, a.windows);
  EvalParams p;
  p.max_windows = a.windows;
  p.mask_samples = a.samples;
  p.batch_size = a.batch;
  p.seed = a.seed;
  p.bins = a.bins;
  p.bf16 = a.bf16 == "true";
  if (!p.bf16 && dtype == "bf16")
    LOG_WARN("--eval-bf16 false: the weights are bf16 (" << a.model << "'s stored dtype, or --dtype), so the products "
             "stay bf16; pass --dtype f32 for an f32 evaluation");
  p.routing = a.routing.resolve(model->config());
  p.mask_mode = a.mask_mode;
  p.block_length = a.block_length;
  if (p.routing.policy == moe::RoutingPolicy::kBlock && p.routing.block_chunk != a.block_length)
    LOG_WARN("eval: --block-chunk " << p.routing.block_chunk << " differs from --diffusion-block-length "
                                    << a.block_length << "; the block decoder votes one coreset per block");
  LOG_INFO("eval: model " << a.model << ", data " << a.data << "/" << a.split << ", "
                          << windows.size() << " windows x " << a.seq_len << " tokens, "
                          << p.mask_samples << " mask samples (" << p.mask_mode << ", block " << p.block_length
                          << "), seed " << p.seed
                          << ", bf16 " << (p.bf16 ? "on" : "off") << ", routing "
                          << moe::routing_policy_name(p.routing.policy)
                          << (p.routing.policy == moe::RoutingPolicy::kBlock
                                  ? " (p " + std::to_string(p.routing.block_top_p) + ", G " +
                                        std::to_string(p.routing.block_min_experts) + ")"
                                  : std::string())
                          << (a.cloze_span > 0 ? ", cloze span " + std::to_string(a.cloze_span) + " at " +
                                                  std::to_string(a.cloze_positions) + " position(s)"
                                            : std::string()));
  ProgressBar bar("eval", windows.size() * p.mask_samples, "seq");
  auto res = evaluate_elbo(model, windows, p, [&](int64_t d, int64_t) { bar.update(d); });
  bar.finish();
  ClozeResult cloze;
  if (a.cloze_span > 0) cloze = evaluate_cloze(model, windows, a.cloze_span, p, a.cloze_positions);
  if (a.json) {
    auto j = res.to_json();
    j["routing_policy"] = moe::routing_policy_name(p.routing.policy);
    j["routing_source"] = a.routing.policy_source(model->config());
    j["dtype"] = dtype;
    if (a.cloze_span > 0)
      j["cloze"] = {{"span", a.cloze_span},           {"positions", a.cloze_positions},
                    {"accuracy", cloze.accuracy},     {"tokens", cloze.tokens},
                    {"correct_per_window", cloze.correct_per_window}};
    std::cout << j.dump(2) << std::endl;
    return 0;
  }
  if (a.cloze_span > 0)
    std::cout << "cloze accuracy (span " << a.cloze_span << ", " << cloze.tokens << " tokens) " << std::fixed
              << std::setprecision(4) << cloze.accuracy << "\n";
  std::cout << "ELBO loss " << std::fixed << std::setprecision(4) << res.loss << "   perplexity "
            << std::setprecision(2) << res.ppl << "   (" << res.sequences << " sequences, "
            << std::setprecision(1) << res.seconds << " s)\n";
  std::cout << "routing: load CV " << std::setprecision(3) << res.routing.load_cv << ", drop rate "
            << res.routing.drop_rate << ", zero-expert tokens " << res.routing.zero_expert_rate
            << ", unique experts per block of " << res.block_length << " " << std::setprecision(2)
            << res.unique_experts_per_block << "\n";
  for (const auto& b : res.per_bin) {
    std::cout << "\n| r bin | sequences | loss |\n|---|---|---|\n";
    for (int64_t i = 0; i < b.bins(); ++i)
      std::cout << "| [" << std::setprecision(2) << b.lo(i) << ", " << b.hi(i) << (i + 1 == b.bins() ? "]" : ")")
                << " | " << b.count(i) << " | " << std::setprecision(4) << b.mean(i) << " |\n";
  }
  return 0;
}

}  // namespace

void register_eval(CLI::App& app) {
  auto a = std::make_shared<EvalArgs>();
  auto* sub = app.add_subcommand("eval", "ELBO perplexity with deterministic masks, per mask-ratio bin");
  sub->add_option("-m,--model", a->model, "Model directory")->required()->check(CLI::ExistingDirectory);
  sub->add_option("--data", a->data, "Prepared data directory")->capture_default_str();
  sub->add_option("--split", a->split, "Shard split")->capture_default_str();
  sub->add_option("--eval-seq-len", a->seq_len, "Tokens per window")->capture_default_str()->check(CLI::Range(2, 1 << 20));
  sub->add_option("--eval-windows", a->windows, "Windows to evaluate")->capture_default_str()->check(CLI::PositiveNumber);
  sub->add_option("--eval-mask-samples", a->samples, "Mask draws per window")->capture_default_str()->check(CLI::PositiveNumber);
  sub->add_option("--eval-batch-size", a->batch, "Windows per forward")->capture_default_str()->check(CLI::PositiveNumber);
  sub->add_option("--eval-seed", a->seed, "Mask seed")->capture_default_str();
  sub->add_option("--eval-bins", a->bins, "Mask-ratio bin counts (e.g. 4 10)")->capture_default_str()->check(CLI::PositiveNumber);
  sub->add_option("--eval-bf16", a->bf16,
                  "true|false: bf16 autocast of the products of f32 weights (bf16 weights compute in bf16 either "
                  "way; --dtype f32 for an f32 evaluation)")
      ->capture_default_str();
  sub->add_flag("--json", a->json, "Print JSON");
  sub->add_option("--eval-mask-mode", a->mask_mode,
                  "uniform (mask each token with prob. t, as training) or semi-ar (as the block decoder sees "
                  "the model: earlier blocks clean, one block noised, later blocks masked)")
      ->check(CLI::IsMember({"uniform", "semi-ar"}))->capture_default_str();
  sub->add_option("--diffusion-block-length", a->block_length,
                  "Decoding block length: the semi-ar block and the unit of unique experts per block")
      ->capture_default_str()->check(CLI::PositiveNumber);
  sub->add_option("--eval-cloze-span", a->cloze_span,
                  "Also report cloze accuracy: mask this many tokens mid-window, predict them in one forward (0 = off)")
      ->capture_default_str()->check(CLI::NonNegativeNumber);
  sub->add_option("--eval-cloze-positions", a->cloze_positions,
                  "Cloze spans per window, evenly spaced, one forward each (1 = mid-window)")
      ->capture_default_str()->check(CLI::PositiveNumber);
  a->routing.add_to(sub);
  set_runner(sub, [a, sub] {
    if (sub->count("--eval-cloze-positions") > 0 && a->cloze_span <= 0)
      fail("", "--eval-cloze-positions", "only applies with --eval-cloze-span", "add --eval-cloze-span N, or drop it");
    return run(*a);
  });
}

}  // namespace ecdlm::cli
