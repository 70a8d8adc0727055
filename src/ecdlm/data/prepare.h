// `ecdlm prepare-data`: corpus -> tokenizer -> train/val token shards + meta.json.
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace ecdlm::data {

struct PrepareParams {
  std::string source = "brown";     // brown | text | jsonl
  std::vector<std::string> inputs;  // brown: one dir (empty = default_brown_dir())
  std::string out_dir;
  int vocab_size = 8192;
  std::string tokenizer_path;       // load (and copy) this spm model instead of training
  double val_fraction = 0.05;
  uint64_t seed = 1234;
};

// Writes into out_dir: tokenizer.model, train.bin/json, val.bin/json and meta.json
// ({"format","source","inputs","seed","val_fraction","vocab_size","mask_token_id",
// "eos_token_id","pad_token_id","tokenizer","tokenizer_type","splits":{...}}).
// The tokenizer is trained on the train split only. Returns a summary: documents and tokens
// per split, vocab size, special ids, timings. Bad inputs or an unwritable out_dir -> UserError.
nlohmann::json prepare_data(const PrepareParams& params);

}  // namespace ecdlm::data
