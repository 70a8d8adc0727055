// Training batches (random windows, resumable) and fixed evaluation windows over a TokenShard.
#pragma once
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <cstdint>
#include <vector>

#include "ecdlm/data/shards.h"

namespace ecdlm::data {

// Contiguous windows of seq_len tokens (documents joined by eos, no document masking).
// Each epoch takes the non-overlapping windows offset + k * seq_len, with a random offset in
// [0, seq_len), in a random order: every token is seen about once per epoch. All randomness is
// derived from (seed, epoch) by splitmix64, so state() = {epoch, position} resumes bit-exactly
// on any platform. Batches run across epoch boundaries.
class BatchSampler {
 public:
  // The shard is copied (cheap: the mapping is shared). Shard shorter than seq_len + 1 tokens,
  // or non-positive sizes -> UserError.
  BatchSampler(const TokenShard& shard, int64_t batch_size, int64_t seq_len, uint64_t seed);

  torch::Tensor next();  // int64 [batch_size, seq_len]

  // {"kind","seed","epoch","position","seq_len","batch_size","num_tokens"}.
  nlohmann::json state() const;
  // Restores a state(); a state from another shard, seq_len or seed is a UserError.
  // The batch size may differ (positions count windows, not batches).
  void load_state(const nlohmann::json& state);

  int64_t epoch() const { return epoch_; }
  int64_t windows_per_epoch() const { return static_cast<int64_t>(starts_.size()); }
  int64_t batch_size() const { return batch_size_; }
  int64_t seq_len() const { return seq_len_; }

 private:
  void start_epoch(int64_t epoch);

  TokenShard shard_;
  int64_t batch_size_;
  int64_t seq_len_;
  uint64_t seed_;
  int64_t epoch_ = 0;
  int64_t position_ = 0;  // windows of the current epoch already served
  std::vector<int64_t> starts_;
};

// Fixed, deterministic evaluation windows: [k * seq_len, (k + 1) * seq_len) from the start of
// the shard, at most max_windows of them (max_windows <= 0: all that fit).
class EvalWindows {
 public:
  // A shard with fewer than seq_len tokens -> UserError.
  EvalWindows(const TokenShard& shard, int64_t seq_len, int64_t max_windows);

  int64_t size() const { return count_; }
  int64_t seq_len() const { return seq_len_; }
  // int64 [count, seq_len] for windows first .. first + count - 1 (std::out_of_range past end).
  torch::Tensor batch(int64_t first, int64_t count) const;

 private:
  TokenShard shard_;
  int64_t seq_len_;
  int64_t count_;
};

}  // namespace ecdlm::data
