#include "ecdlm/text/bpe.h"

#include <algorithm>
#include <cstring>

#include "ecdlm/text/unicode.h"

namespace ecdlm::text {
namespace {

constexpr uint32_t kNoRank = UINT32_MAX;
constexpr size_t kScanMaxSymbols = 64;   // longer words use the heap
constexpr size_t kCacheMaxKey = 256;     // bytes; longer pre-tokens are not cached
constexpr size_t kCacheSlots = 1 << 15;  // cleared when half full

inline uint64_t mix(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  return x;
}

}  // namespace

// ---- StringIdMap ----

uint64_t StringIdMap::hash(std::string_view s) {
  uint64_t h = 0x9E3779B97F4A7C15ULL ^ s.size();
  size_t i = 0;
  for (; i + 8 <= s.size(); i += 8) {
    uint64_t w;
    std::memcpy(&w, s.data() + i, 8);
    h = (h ^ w) * 0x100000001B3ULL;
    h ^= h >> 29;
  }
  uint64_t w = 0;
  std::memcpy(&w, s.data() + i, s.size() - i);
  h = (h ^ w) * 0x100000001B3ULL;
  return mix(h) | 1;  // never 0
}

void StringIdMap::reserve(size_t n) {
  size_t cap = 16;
  while (cap < n * 2) cap <<= 1;
  if (cap > slots_.size()) {
    std::vector<Slot> old;
    old.swap(slots_);
    slots_.assign(cap, Slot{});
    for (const auto& s : old)
      if (s.value >= 0) {
        size_t i = s.hash & (cap - 1);
        while (slots_[i].value >= 0) i = (i + 1) & (cap - 1);
        slots_[i] = s;
      }
  }
}

void StringIdMap::grow() { reserve(std::max<size_t>(count_ + 1, slots_.size())); }

uint32_t StringIdMap::insert(std::string_view key, int32_t value) {
  if ((count_ + 1) * 2 > slots_.size()) grow();
  const uint64_t h = hash(key);
  const size_t mask = slots_.size() - 1;
  size_t i = h & mask;
  while (slots_[i].value >= 0) {
    auto& s = slots_[i];
    if (s.hash == h && s.len == key.size() && std::memcmp(arena_.data() + s.off, key.data(), key.size()) == 0) {
      s.value = value;
      return s.off;
    }
    i = (i + 1) & mask;
  }
  const auto off = static_cast<uint32_t>(arena_.size());
  slots_[i] = Slot{h, off, static_cast<uint32_t>(key.size()), value};
  arena_.append(key);
  ++count_;
  return off;
}

int32_t StringIdMap::find(std::string_view key) const {
  if (slots_.empty()) return -1;
  const uint64_t h = hash(key);
  const size_t mask = slots_.size() - 1;
  size_t i = h & mask;
  while (slots_[i].value >= 0) {
    const auto& s = slots_[i];
    if (s.hash == h && s.len == key.size() && std::memcmp(arena_.data() + s.off, key.data(), key.size()) == 0)
      return s.value;
    i = (i + 1) & mask;
  }
  return -1;
}

// ---- BpeModel: building ----

void BpeModel::reserve(size_t vocab, size_t merges) {
  vocab_.reserve(vocab);
  size_t cap = 16;
  while (cap < merges * 2) cap <<= 1;
  if (cap > merges_.size()) {
    merges_.assign(cap, MergeSlot{});
    merge_count_ = 0;
  }
}

void BpeModel::add_token(std::string_view token, int32_t id) {
  const uint32_t off = vocab_.insert(token, id);
  if (static_cast<size_t>(id) >= id_off_.size()) id_off_.resize(static_cast<size_t>(id) + 1, ~uint64_t{0});
  id_off_[static_cast<size_t>(id)] = (static_cast<uint64_t>(off) << 32) | token.size();
}

void BpeModel::grow_merges() {
  std::vector<MergeSlot> old;
  old.swap(merges_);
  merges_.assign(std::max<size_t>(16, old.size() * 2), MergeSlot{});
  merge_count_ = 0;
  for (const auto& m : old)
    if (m.new_id >= 0) insert_merge(m.key, m.rank, m.new_id);
}

void BpeModel::insert_merge(uint64_t key, uint32_t rank, int32_t new_id) {
  if ((merge_count_ + 1) * 2 > merges_.size()) grow_merges();
  const size_t mask = merges_.size() - 1;
  size_t i = mix(key) & mask;
  while (merges_[i].new_id >= 0 && merges_[i].key != key) i = (i + 1) & mask;
  if (merges_[i].new_id < 0) ++merge_count_;
  merges_[i] = MergeSlot{key, rank, new_id};  // a repeated pair keeps its last rank
}

std::string BpeModel::add_merge(std::string_view a, std::string_view b) {
  const int32_t ia = vocab_.find(a), ib = vocab_.find(b);
  if (ia < 0) return std::string(a);
  if (ib < 0) return std::string(b);
  const size_t plen = opt_.continuing_subword_prefix ? opt_.continuing_subword_prefix->size() : 0;
  if (b.size() < plen) return std::string(b);
  thread_local std::string joined;
  joined.assign(a);
  joined.append(b.substr(plen));
  const int32_t nid = vocab_.find(joined);
  if (nid < 0) return joined;
  insert_merge((static_cast<uint64_t>(static_cast<uint32_t>(ia)) << 32) | static_cast<uint32_t>(ib),
               next_rank_++, nid);
  return {};
}

std::optional<std::string> BpeModel::finish() {
  for (int b = 0; b < 256; ++b) {
    const auto& t = uni::byte_level();
    byte_id_[b] = vocab_.find(std::string_view(t.byte_to_utf8[b], t.byte_to_utf8_len[b]));
  }
  if (opt_.unk_token) {
    unk_id_ = vocab_.find(*opt_.unk_token);
    if (unk_id_ < 0) return opt_.unk_token;
  }
  cache_.assign(kCacheSlots, CacheSlot{});
  return std::nullopt;
}

std::string_view BpeModel::id_to_token(int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= id_off_.size() || id_off_[id] == ~uint64_t{0}) return {};
  return vocab_.key_at(static_cast<uint32_t>(id_off_[id] >> 32), static_cast<uint32_t>(id_off_[id]));
}

// ---- BpeModel: encoding ----

inline bool BpeModel::find_merge(int32_t a, int32_t b, uint32_t& rank, int32_t& new_id) const {
  const uint64_t key = (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  const size_t mask = merges_.size() - 1;
  size_t i = mix(key) & mask;
  for (;;) {
    const MergeSlot& m = merges_[i];
    if (m.new_id < 0) return false;
    if (m.key == key) {
      rank = m.rank;
      new_id = m.new_id;
      return true;
    }
    i = (i + 1) & mask;
  }
}

void BpeModel::merge_word_scan(std::vector<int32_t>& syms) const {
  if (syms.size() < 2 || merges_.empty()) return;
  thread_local std::vector<uint32_t> rank;
  thread_local std::vector<int32_t> nid;
  const size_t n = syms.size();
  rank.resize(n - 1);
  nid.resize(n - 1);
  for (size_t i = 0; i + 1 < n; ++i)
    if (!find_merge(syms[i], syms[i + 1], rank[i], nid[i])) rank[i] = kNoRank;
  size_t len = n;
  for (;;) {
    uint32_t best = kNoRank;
    size_t at = 0;
    for (size_t i = 0; i + 1 < len; ++i)
      if (rank[i] < best) {
        best = rank[i];
        at = i;
      }
    if (best == kNoRank) break;
    syms[at] = nid[at];
    // Remove symbol at+1 and pair slot at (pair at now joins syms[at] and the next symbol).
    for (size_t i = at + 1; i + 1 < len; ++i) syms[i] = syms[i + 1];
    for (size_t i = at; i + 2 < len; ++i) {
      rank[i] = rank[i + 1];
      nid[i] = nid[i + 1];
    }
    --len;
    if (at > 0 && !find_merge(syms[at - 1], syms[at], rank[at - 1], nid[at - 1])) rank[at - 1] = kNoRank;
    if (at + 1 < len && !find_merge(syms[at], syms[at + 1], rank[at], nid[at])) rank[at] = kNoRank;
  }
  syms.resize(len);
}

void BpeModel::merge_word_heap(std::vector<int32_t>& syms) const {
  const size_t n = syms.size();
  if (n < 2 || merges_.empty()) return;
  struct Item {
    uint32_t rank;
    uint32_t pos;
    int32_t new_id;
  };
  const auto later = [](const Item& x, const Item& y) {
    return x.rank != y.rank ? x.rank > y.rank : x.pos > y.pos;
  };
  thread_local std::vector<int32_t> prev, next;
  thread_local std::vector<Item> heap;
  prev.resize(n);
  next.resize(n);
  heap.clear();
  for (size_t i = 0; i < n; ++i) {
    prev[i] = static_cast<int32_t>(i) - 1;
    next[i] = i + 1 < n ? static_cast<int32_t>(i + 1) : -1;
  }
  auto push = [&](int32_t pos) {
    if (pos < 0 || next[pos] < 0) return;
    uint32_t r;
    int32_t id;
    if (find_merge(syms[pos], syms[next[pos]], r, id)) {
      heap.push_back(Item{r, static_cast<uint32_t>(pos), id});
      std::push_heap(heap.begin(), heap.end(), later);
    }
  };
  for (size_t i = 0; i + 1 < n; ++i) push(static_cast<int32_t>(i));
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), later);
    const Item top = heap.back();
    heap.pop_back();
    const int32_t pos = static_cast<int32_t>(top.pos);
    if (syms[pos] < 0) continue;  // merged away
    const int32_t nx = next[pos];
    if (nx < 0) continue;
    uint32_t r;
    int32_t id;
    if (!find_merge(syms[pos], syms[nx], r, id) || r != top.rank) continue;  // stale
    syms[pos] = id;
    syms[nx] = -1;
    next[pos] = next[nx];
    if (next[nx] >= 0) prev[next[nx]] = pos;
    push(prev[pos]);
    push(pos);
  }
  size_t w = 0;
  for (size_t i = 0; i < n; ++i)
    if (syms[i] >= 0) syms[w++] = syms[i];
  syms.resize(w);
}

void BpeModel::initial_symbols(std::string_view word, std::vector<int32_t>& syms) const {
  thread_local std::string s;
  bool pending_unk = false;
  size_t i = 0;
  while (i < word.size()) {
    const size_t start = i;
    i += uni::cp_len(static_cast<unsigned char>(word[i]));
    if (i > word.size()) i = word.size();
    s.clear();
    if (start > 0 && opt_.continuing_subword_prefix) s += *opt_.continuing_subword_prefix;
    s.append(word.substr(start, i - start));
    if (i == word.size() && opt_.end_of_word_suffix) s += *opt_.end_of_word_suffix;
    const int32_t id = vocab_.find(s);
    if (id >= 0) {
      if (pending_unk) syms.push_back(unk_id_);
      pending_unk = false;
      syms.push_back(id);
      continue;
    }
    if (opt_.byte_fallback) {
      static const char* hex = "0123456789ABCDEF";
      const size_t before = syms.size();
      bool all = true;
      for (unsigned char b : s) {
        const char code[7] = {'<', '0', 'x', hex[b >> 4], hex[b & 15], '>', 0};
        const int32_t bid = vocab_.find(std::string_view(code, 6));
        if (bid < 0) {
          all = false;
          break;
        }
        syms.push_back(bid);
      }
      if (all) continue;
      syms.resize(before);
    }
    if (unk_id_ >= 0) {
      if (pending_unk && !opt_.fuse_unk) syms.push_back(unk_id_);
      pending_unk = true;
    }
  }
  if (pending_unk) syms.push_back(unk_id_);
}

void BpeModel::tokenize_uncached(std::string_view piece, bool byte_mode, std::vector<int32_t>& out) const {
  thread_local std::string mapped;
  thread_local std::vector<int32_t> syms;
  syms.clear();
  std::string_view word = piece;
  bool fast = byte_mode && !opt_.continuing_subword_prefix && !opt_.end_of_word_suffix;
  if (byte_mode) {
    for (unsigned char b : piece)
      if (byte_id_[b] < 0) fast = false;
    if (!fast || opt_.ignore_merges) {
      mapped.clear();
      uni::byte_level_encode(piece, mapped);
      word = mapped;
    }
  }
  if (opt_.ignore_merges) {
    const int32_t id = vocab_.find(word);
    if (id >= 0) {
      out.push_back(id);
      return;
    }
  }
  if (fast) {
    syms.reserve(piece.size());
    for (unsigned char b : piece) syms.push_back(byte_id_[b]);
  } else {
    initial_symbols(word, syms);
  }
  if (syms.size() <= kScanMaxSymbols) merge_word_scan(syms);
  else merge_word_heap(syms);
  out.insert(out.end(), syms.begin(), syms.end());
}

void BpeModel::tokenize(std::string_view piece, bool byte_mode, std::vector<int32_t>& out) const {
  if (piece.empty()) return;
  const bool cacheable = piece.size() <= kCacheMaxKey && !cache_.empty();
  uint64_t h = 0;
  if (cacheable) {
    h = StringIdMap::hash(piece);
    std::lock_guard<std::mutex> lock(cache_mu_);
    const size_t mask = cache_.size() - 1;
    for (size_t i = h & mask; cache_[i].used; i = (i + 1) & mask) {
      const CacheSlot& c = cache_[i];
      if (c.hash == h && c.key_len == piece.size() &&
          std::memcmp(cache_keys_.data() + c.key_off, piece.data(), piece.size()) == 0) {
        out.insert(out.end(), cache_ids_.begin() + c.ids_off, cache_ids_.begin() + c.ids_off + c.ids_len);
        return;
      }
    }
  }
  const size_t start = out.size();
  tokenize_uncached(piece, byte_mode, out);
  if (!cacheable) return;
  std::lock_guard<std::mutex> lock(cache_mu_);
  if ((cache_count_ + 1) * 2 > cache_.size()) {
    std::fill(cache_.begin(), cache_.end(), CacheSlot{});
    cache_keys_.clear();
    cache_ids_.clear();
    cache_count_ = 0;
  }
  const size_t mask = cache_.size() - 1;
  size_t i = h & mask;
  while (cache_[i].used) {
    const CacheSlot& c = cache_[i];
    if (c.hash == h && c.key_len == piece.size() &&
        std::memcmp(cache_keys_.data() + c.key_off, piece.data(), piece.size()) == 0)
      return;  // another thread inserted it
    i = (i + 1) & mask;
  }
  cache_[i] = CacheSlot{h, static_cast<uint32_t>(cache_keys_.size()), static_cast<uint32_t>(piece.size()),
                        static_cast<uint32_t>(cache_ids_.size()), static_cast<uint32_t>(out.size() - start), true};
  cache_keys_.append(piece);
  cache_ids_.insert(cache_ids_.end(), out.begin() + static_cast<std::ptrdiff_t>(start), out.end());
  ++cache_count_;
}

}  // namespace ecdlm::text
