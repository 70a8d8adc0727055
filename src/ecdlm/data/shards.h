// Token shards: a raw little-endian id array (`<split>.bin`) plus a JSON header
// (`<split>.json`). Documents are concatenated, each followed by the eos id.
#pragma once
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace ecdlm::data {

// Writes dir/<split>.bin (uint16 when vocab_size <= 65536, else uint32) and dir/<split>.json
// ({"format","dtype","num_tokens","vocab_size", ...extra_meta}); both via temp file + rename,
// the .json last so it marks a complete shard. Ids outside [0, vocab_size) throw
// std::invalid_argument; an unwritable dir is a UserError.
void write_token_shard(const std::string& dir, const std::string& split,
                       const std::vector<int32_t>& ids, int64_t vocab_size,
                       nlohmann::json extra_meta = nlohmann::json::object());

// Read-only, memory-mapped view of a shard. Copies share the mapping.
class TokenShard {
 public:
  // Validates the header, the .bin size and that every id is < vocab_size; problems are
  // UserErrors naming the file with the fix "re-run ecdlm prepare-data".
  static TokenShard open(const std::string& dir, const std::string& split);

  int64_t size() const { return num_tokens_; }
  int64_t vocab_size() const { return vocab_size_; }
  int item_size() const { return item_size_; }
  const nlohmann::json& meta() const { return meta_; }
  const std::string& bin_path() const { return bin_path_; }

  int64_t at(int64_t i) const;
  // Copies ids [start, start + len) into out; throws std::out_of_range past the end.
  void read(int64_t start, int64_t len, int64_t* out) const;
  // The same as a fresh int64 tensor of shape [len].
  torch::Tensor window(int64_t start, int64_t len) const;

 private:
  struct Mapping;
  std::shared_ptr<const Mapping> map_;
  std::string bin_path_;
  nlohmann::json meta_;
  int64_t num_tokens_ = 0;
  int64_t vocab_size_ = 0;
  int item_size_ = 2;
};

}  // namespace ecdlm::data
