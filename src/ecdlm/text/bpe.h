// The BPE model of Hugging Face tokenizers: vocab, ranked merges, unk / byte fallback,
// continuing-subword prefix and end-of-word suffix, ignore_merges, and a word cache.
#pragma once
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace ecdlm::text {

// Open-addressing map from byte strings (kept in one arena) to int32 values.
class StringIdMap {
 public:
  void reserve(size_t n);
  // Inserts or overwrites; returns the key's offset in the arena.
  uint32_t insert(std::string_view key, int32_t value);
  int32_t find(std::string_view key) const;  // -1 if absent
  size_t size() const { return count_; }
  std::string_view key_at(uint32_t off, uint32_t len) const { return {arena_.data() + off, len}; }
  static uint64_t hash(std::string_view s);

 private:
  struct Slot {
    uint64_t hash = 0;
    uint32_t off = 0, len = 0;
    int32_t value = -1;  // -1 = empty
  };
  void grow();
  std::vector<Slot> slots_;
  std::string arena_;
  size_t count_ = 0;
};

class BpeModel {
 public:
  struct Options {
    std::optional<std::string> unk_token, continuing_subword_prefix, end_of_word_suffix;
    bool fuse_unk = false, byte_fallback = false, ignore_merges = false;
  };
  explicit BpeModel(Options o) : opt_(std::move(o)) {}

  // Building. add_merge returns an empty string on success, else the missing token.
  void reserve(size_t vocab, size_t merges);
  void add_token(std::string_view token, int32_t id);
  std::string add_merge(std::string_view a, std::string_view b);
  // Call after the vocab is complete; returns the unk token if it is not in the vocab.
  std::optional<std::string> finish();

  // Tokenizes one pre-token. In byte mode `piece` holds raw bytes and each byte stands for
  // its GPT-2 byte-level character; otherwise `piece` is the (UTF-8) text to match.
  void tokenize(std::string_view piece, bool byte_mode, std::vector<int32_t>& out) const;

  int32_t token_to_id(std::string_view token) const { return vocab_.find(token); }
  bool has_id(int32_t id) const {
    return id >= 0 && static_cast<size_t>(id) < id_off_.size() && id_off_[static_cast<size_t>(id)] != ~uint64_t{0};
  }
  // Empty view for an id that has no token (check has_id: a token may be "").
  std::string_view id_to_token(int32_t id) const;
  int64_t max_id_plus_one() const { return static_cast<int64_t>(id_off_.size()); }
  size_t num_tokens() const { return vocab_.size(); }
  size_t num_merges() const { return merge_count_; }

  // Applies the merges to a word of symbol ids. The two algorithms must agree: the scan is
  // used for short words, the heap for long ones (tests compare them).
  void merge_word_scan(std::vector<int32_t>& syms) const;
  void merge_word_heap(std::vector<int32_t>& syms) const;

 private:
  struct MergeSlot {
    uint64_t key = ~uint64_t{0};  // (a << 32) | b; all ones = empty
    uint32_t rank = 0;
    int32_t new_id = -1;
  };
  // Rank and result of merging (a, b); rank UINT32_MAX if there is no such merge.
  inline bool find_merge(int32_t a, int32_t b, uint32_t& rank, int32_t& new_id) const;
  void insert_merge(uint64_t key, uint32_t rank, int32_t new_id);
  void grow_merges();
  void tokenize_uncached(std::string_view piece, bool byte_mode, std::vector<int32_t>& out) const;
  void initial_symbols(std::string_view word, std::vector<int32_t>& syms) const;

  Options opt_;
  StringIdMap vocab_;
  std::vector<uint64_t> id_off_;  // (offset << 32 | len) into vocab_'s arena; ~0 = no token
  std::vector<MergeSlot> merges_;
  size_t merge_count_ = 0;
  uint32_t next_rank_ = 0;
  int32_t unk_id_ = -1;
  int32_t byte_id_[256];  // byte mode: id of each byte's alphabet character (-1 if absent)

  // Word cache: pre-token bytes -> ids. Guarded by cache_mu_; cleared when full.
  struct CacheSlot {
    uint64_t hash = 0;
    uint32_t key_off = 0, key_len = 0, ids_off = 0, ids_len = 0;
    bool used = false;
  };
  mutable std::mutex cache_mu_;
  mutable std::vector<CacheSlot> cache_;
  mutable std::string cache_keys_;
  mutable std::vector<int32_t> cache_ids_;
  mutable size_t cache_count_ = 0;
};

}  // namespace ecdlm::text
