// `ecdlm bench tokenize`: ecdlm's tokenizer vs the Hugging Face Rust library (its Node binding,
// run as a child process in the same benchmark), on the Brown corpus, one encode() call per
// document on one thread.
#pragma once
#include <nlohmann/json.hpp>

#include <string>
#include <vector>

namespace ecdlm::bench {

struct TokenizeBenchParams {
  std::string tokenizer;   // tokenizer.json (default: Qwen3's from the npm oracle packages)
  std::string brown_dir;   // default: data::default_brown_dir()
  std::string npm_modules = "data/npm-tok/node_modules";
  std::string oracle_script = "tests/tokenizer/oracle.js";
  int64_t reps = 5;        // timed passes over the corpus (after one warm-up); median reported
  bool run_oracle = true;
};

struct TokenizeBenchResult {
  int64_t documents = 0, bytes = 0, tokens = 0;
  double load_s = 0.0;                 // ecdlm, median of `reps` loads
  std::vector<double> encode_s;        // ecdlm, per timed pass
  double mb_per_s = 0.0, tokens_per_s = 0.0;
  bool have_oracle = false;
  std::string oracle_note;             // why the oracle did not run, if it did not
  double hf_load_s = 0.0;
  std::vector<double> hf_encode_s;
  int64_t hf_tokens = 0;
  double hf_mb_per_s = 0.0, hf_tokens_per_s = 0.0;
  double ratio = 0.0;                  // ecdlm MB/s over HF MB/s
};

TokenizeBenchResult run_tokenize_bench(const TokenizeBenchParams& p);
std::string to_markdown(const TokenizeBenchResult& r, const TokenizeBenchParams& p);
nlohmann::json to_json(const TokenizeBenchResult& r);

}  // namespace ecdlm::bench
