#include "ecdlm/data/shards.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "ecdlm/util/error.h"
#include "ecdlm/util/fs.h"

namespace fs = std::filesystem;

// Shards are raw little-endian; reading them with plain loads needs a little-endian host.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "token shards assume little-endian");

namespace ecdlm::data {
namespace {

const char* kFormat = "ecdlm-tokens-v1";
const char* kRerun = "re-run ecdlm prepare-data";

template <typename T>
void copy_ids(const void* base, int64_t start, int64_t len, int64_t* out) {
  const T* p = static_cast<const T*>(base) + start;
  for (int64_t i = 0; i < len; ++i) out[i] = static_cast<int64_t>(p[i]);
}

}  // namespace

struct TokenShard::Mapping {
  void* addr = nullptr;
  size_t len = 0;
  ~Mapping() {
    if (addr != nullptr) ::munmap(addr, len);
  }
};

void write_token_shard(const std::string& dir, const std::string& split,
                       const std::vector<int32_t>& ids, int64_t vocab_size,
                       nlohmann::json extra_meta) {
  if (vocab_size <= 0 || vocab_size > (int64_t{1} << 32))
    throw std::invalid_argument("write_token_shard: bad vocab_size " + std::to_string(vocab_size));
  for (size_t i = 0; i < ids.size(); ++i)
    if (ids[i] < 0 || ids[i] >= vocab_size)
      throw std::invalid_argument("write_token_shard: id " + std::to_string(ids[i]) +
                                  " at position " + std::to_string(i) + " outside vocab " +
                                  std::to_string(vocab_size));
  ensure_writable_dir(dir);
  const std::string base = (fs::path(dir) / split).string();
  // Build the file image directly in the string handed to the atomic writer (one copy).
  const bool narrow = vocab_size <= 65536;
  const size_t item = narrow ? 2 : 4;
  std::string bytes(ids.size() * item, '\0');
  if (narrow) {
    for (size_t i = 0; i < ids.size(); ++i) {
      const auto v = static_cast<uint16_t>(ids[i]);
      std::memcpy(&bytes[2 * i], &v, 2);
    }
  } else if (!ids.empty()) {
    std::memcpy(bytes.data(), ids.data(), bytes.size());
  }
  write_file_atomic(base + ".bin", bytes);
  bytes = std::string();
  nlohmann::json meta = extra_meta.is_object() ? extra_meta : nlohmann::json::object();
  // Core fields win over anything in extra_meta: readers rely on them.
  meta["format"] = kFormat;
  meta["dtype"] = narrow ? "uint16" : "uint32";
  meta["num_tokens"] = static_cast<int64_t>(ids.size());
  meta["vocab_size"] = vocab_size;
  write_file_atomic(base + ".json", meta.dump(2) + "\n");
}

TokenShard TokenShard::open(const std::string& dir, const std::string& split) {
  const std::string base = (fs::path(dir) / split).string();
  const std::string json_path = base + ".json";
  TokenShard s;
  s.bin_path_ = base + ".bin";
  std::error_code ec;
  if (!fs::is_regular_file(json_path, ec))
    fail(json_path, "", "token shard header not found", kRerun);
  {
    std::ifstream in(json_path);
    try {
      s.meta_ = nlohmann::json::parse(in);
    } catch (const nlohmann::json::exception& e) {
      fail(json_path, "", std::string("invalid JSON: ") + e.what(), kRerun);
    }
  }
  const auto& m = s.meta_;
  if (!m.is_object()) fail(json_path, "", "header must be a JSON object", kRerun);
  if (!m.contains("dtype") || !m["dtype"].is_string())
    fail(json_path, "dtype", "missing or not a string", kRerun);
  const std::string dtype = m["dtype"];
  if (dtype == "uint16") {
    s.item_size_ = 2;
  } else if (dtype == "uint32") {
    s.item_size_ = 4;
  } else {
    fail(json_path, "dtype", "unsupported '" + dtype + "' (expected uint16 or uint32)", kRerun);
  }
  auto get_int = [&](const char* key) -> int64_t {
    if (!m.contains(key) || !m[key].is_number_integer())
      fail(json_path, key, "missing or not an integer", kRerun);
    return m[key].get<int64_t>();
  };
  s.num_tokens_ = get_int("num_tokens");
  s.vocab_size_ = get_int("vocab_size");
  if (s.num_tokens_ < 0) fail(json_path, "num_tokens", "negative", kRerun);
  if (s.vocab_size_ <= 0) fail(json_path, "vocab_size", "must be positive", kRerun);
  if (s.item_size_ == 2 && s.vocab_size_ > 65536)
    fail(json_path, "vocab_size", "too large for dtype uint16", kRerun);

  if (!fs::is_regular_file(s.bin_path_, ec))
    fail(s.bin_path_, "", "token shard data not found", kRerun);
  const uintmax_t expected = static_cast<uintmax_t>(s.num_tokens_) * s.item_size_;
  const uintmax_t actual = fs::file_size(s.bin_path_, ec);
  if (ec || actual != expected) {
    std::ostringstream msg;
    msg << "size " << actual << " bytes, header says " << s.num_tokens_ << " tokens x "
        << s.item_size_ << " bytes = " << expected << " (truncated or stale shard)";
    fail(s.bin_path_, "", msg.str(), kRerun);
  }
  auto mapping = std::make_shared<Mapping>();
  if (expected > 0) {
    const int fd = ::open(s.bin_path_.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) fail(s.bin_path_, "", std::string("cannot open: ") + std::strerror(errno), kRerun);
    void* addr = ::mmap(nullptr, expected, PROT_READ, MAP_SHARED, fd, 0);
    const int err = errno;
    ::close(fd);  // the mapping keeps the file alive
    if (addr == MAP_FAILED)
      fail(s.bin_path_, "", std::string("mmap failed: ") + std::strerror(err), kRerun);
    mapping->addr = addr;
    mapping->len = expected;
  }
  s.map_ = mapping;

  // One linear pass over the ids: an out-of-range id would otherwise surface much later as an
  // embedding index error deep inside training.
  int64_t max_id = -1;
  if (s.item_size_ == 2) {
    const auto* p = static_cast<const uint16_t*>(mapping->addr);
    for (int64_t i = 0; i < s.num_tokens_; ++i) max_id = std::max<int64_t>(max_id, p[i]);
  } else {
    const auto* p = static_cast<const uint32_t*>(mapping->addr);
    for (int64_t i = 0; i < s.num_tokens_; ++i) max_id = std::max<int64_t>(max_id, p[i]);
  }
  if (max_id >= s.vocab_size_)
    fail(s.bin_path_, "", "contains id " + std::to_string(max_id) + " >= vocab_size " +
                              std::to_string(s.vocab_size_), kRerun);
  return s;
}

int64_t TokenShard::at(int64_t i) const {
  int64_t v = 0;
  read(i, 1, &v);
  return v;
}

void TokenShard::read(int64_t start, int64_t len, int64_t* out) const {
  if (start < 0 || len < 0 || start > num_tokens_ - len)
    throw std::out_of_range("TokenShard::read [" + std::to_string(start) + ", +" +
                            std::to_string(len) + ") outside " + bin_path_ + " (" +
                            std::to_string(num_tokens_) + " tokens)");
  if (len == 0) return;
  if (item_size_ == 2) {
    copy_ids<uint16_t>(map_->addr, start, len, out);
  } else {
    copy_ids<uint32_t>(map_->addr, start, len, out);
  }
}

torch::Tensor TokenShard::window(int64_t start, int64_t len) const {
  auto t = torch::empty({len}, torch::kLong);
  read(start, len, t.data_ptr<int64_t>());
  return t;
}

}  // namespace ecdlm::data
