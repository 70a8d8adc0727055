#include "ecdlm/data/batcher.h"

#include <algorithm>
#include <stdexcept>
#include <string>

#include "ecdlm/util/error.h"

namespace ecdlm::data {
namespace {

const char* kStateKind = "batch_sampler_v1";

uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// Uniform in [0, n) by rejection, so results do not depend on the standard library's
// distributions (which differ between implementations).
uint64_t below(uint64_t& state, uint64_t n) {
  const uint64_t limit = UINT64_MAX - UINT64_MAX % n;
  uint64_t x;
  do {
    x = splitmix64(state);
  } while (x >= limit);
  return x % n;
}

}  // namespace

BatchSampler::BatchSampler(const TokenShard& shard, int64_t batch_size, int64_t seq_len,
                           uint64_t seed)
    : shard_(shard), batch_size_(batch_size), seq_len_(seq_len), seed_(seed) {
  if (batch_size <= 0) fail("", "batch_size", "must be positive, got " + std::to_string(batch_size));
  if (seq_len <= 0) fail("", "seq_len", "must be positive, got " + std::to_string(seq_len));
  if (shard.size() < seq_len + 1)
    fail(shard.bin_path(), "", "only " + std::to_string(shard.size()) +
                                   " tokens, need at least seq_len + 1 = " +
                                   std::to_string(seq_len + 1),
         "use a shorter seq_len or a larger corpus (re-run ecdlm prepare-data)");
  start_epoch(0);
}

void BatchSampler::start_epoch(int64_t epoch) {
  epoch_ = epoch;
  position_ = 0;
  // Derive the epoch's stream from (seed, epoch) only: resuming needs no RNG snapshot.
  uint64_t mix = seed_ ^ (static_cast<uint64_t>(epoch) * 0xD1B54A32D192ED03ULL);
  uint64_t rng = splitmix64(mix);
  const int64_t n = shard_.size();
  // The offset range keeps at least one full window even when n < 2 * seq_len.
  const int64_t offset_range = std::min(seq_len_, n - seq_len_ + 1);
  const int64_t offset = static_cast<int64_t>(below(rng, static_cast<uint64_t>(offset_range)));
  const int64_t count = (n - offset) / seq_len_;
  starts_.resize(static_cast<size_t>(count));
  for (int64_t k = 0; k < count; ++k) starts_[k] = offset + k * seq_len_;
  for (int64_t k = count - 1; k > 0; --k)
    std::swap(starts_[k], starts_[below(rng, static_cast<uint64_t>(k + 1))]);
}

torch::Tensor BatchSampler::next() {
  auto out = torch::empty({batch_size_, seq_len_}, torch::kLong);
  int64_t* p = out.data_ptr<int64_t>();
  for (int64_t b = 0; b < batch_size_; ++b) {
    if (position_ >= windows_per_epoch()) start_epoch(epoch_ + 1);
    shard_.read(starts_[position_++], seq_len_, p + b * seq_len_);
  }
  return out;
}

nlohmann::json BatchSampler::state() const {
  return {{"kind", kStateKind},       {"seed", seed_},
          {"epoch", epoch_},          {"position", position_},
          {"seq_len", seq_len_},      {"batch_size", batch_size_},
          {"num_tokens", shard_.size()}};
}

void BatchSampler::load_state(const nlohmann::json& s) {
  const char* fix = "resume with the same data directory, seq_len and data seed";
  auto need = [&](const char* key) -> const nlohmann::json& {
    if (!s.is_object() || !s.contains(key) || !s[key].is_number_integer())
      fail("sampler state", key, "missing or not an integer", fix);
    return s[key];
  };
  if (!s.is_object() || s.value("kind", "") != kStateKind)
    fail("sampler state", "kind", std::string("expected \"") + kStateKind + "\"", fix);
  if (need("seq_len").get<int64_t>() != seq_len_)
    fail("sampler state", "seq_len", "saved " + s["seq_len"].dump() + ", now " +
                                         std::to_string(seq_len_), fix);
  if (need("num_tokens").get<int64_t>() != shard_.size())
    fail("sampler state", "num_tokens", "saved " + s["num_tokens"].dump() + ", shard has " +
                                            std::to_string(shard_.size()), fix);
  if (need("seed").get<uint64_t>() != seed_)
    fail("sampler state", "seed", "saved " + s["seed"].dump() + ", now " +
                                      std::to_string(seed_), fix);
  const int64_t epoch = need("epoch").get<int64_t>();
  const int64_t position = need("position").get<int64_t>();
  if (epoch < 0) fail("sampler state", "epoch", "negative", fix);
  start_epoch(epoch);
  if (position < 0 || position > windows_per_epoch())
    fail("sampler state", "position", "outside [0, " + std::to_string(windows_per_epoch()) + "]",
         fix);
  position_ = position;
}

EvalWindows::EvalWindows(const TokenShard& shard, int64_t seq_len, int64_t max_windows)
    : shard_(shard), seq_len_(seq_len), count_(0) {
  if (seq_len <= 0) fail("", "seq_len", "must be positive, got " + std::to_string(seq_len));
  count_ = shard.size() / seq_len;
  if (max_windows > 0) count_ = std::min(count_, max_windows);
  if (count_ == 0)
    fail(shard.bin_path(), "", "only " + std::to_string(shard.size()) +
                                   " tokens, fewer than one evaluation window of " +
                                   std::to_string(seq_len),
         "use a shorter seq_len or a larger --val-fraction (re-run ecdlm prepare-data)");
}

torch::Tensor EvalWindows::batch(int64_t first, int64_t count) const {
  if (first < 0 || count < 0 || first > count_ - count)
    throw std::out_of_range("EvalWindows::batch [" + std::to_string(first) + ", +" +
                            std::to_string(count) + ") outside " + std::to_string(count_) +
                            " windows");
  auto out = torch::empty({count, seq_len_}, torch::kLong);
  int64_t* p = out.data_ptr<int64_t>();
  for (int64_t k = 0; k < count; ++k)
    shard_.read((first + k) * seq_len_, seq_len_, p + k * seq_len_);
  return out;
}

}  // namespace ecdlm::data
