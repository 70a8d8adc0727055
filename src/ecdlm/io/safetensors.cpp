#include "ecdlm/io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "ecdlm/util/error.h"
#include "ecdlm/util/log.h"

namespace ecdlm::io {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

constexpr uint64_t kMaxHeaderBytes = 100ull << 20;  // same cap as the reference implementation
constexpr const char* kFixCorrupt = "the header is corrupt: re-export the checkpoint";
constexpr const char* kFixTruncated = "the file is truncated: re-download or re-export it";
constexpr const char* kIndexName = "model.safetensors.index.json";
constexpr const char* kSingleName = "model.safetensors";

struct DTypeEntry {
  DType dtype;
  const char* name;
  size_t size;
  torch::ScalarType torch_type;
};
constexpr DTypeEntry kDTypes[] = {
    {DType::F32, "F32", 4, torch::kFloat},   {DType::BF16, "BF16", 2, torch::kBFloat16},
    {DType::F16, "F16", 2, torch::kHalf},    {DType::I64, "I64", 8, torch::kLong},
    {DType::I32, "I32", 4, torch::kInt},     {DType::U8, "U8", 1, torch::kByte},
    {DType::BOOL, "BOOL", 1, torch::kBool},  {DType::F64, "F64", 8, torch::kDouble},
    {DType::I16, "I16", 2, torch::kShort},   {DType::I8, "I8", 1, torch::kChar},
};

const DTypeEntry& entry(DType d) {
  for (const auto& e : kDTypes)
    if (e.dtype == d) return e;
  throw std::logic_error("safetensors: unhandled DType");
}

bool parse_dtype(const std::string& s, DType* out) {
  for (const auto& e : kDTypes)
    if (s == e.name) return *out = e.dtype, true;
  return false;
}

bool try_from_torch(torch::ScalarType t, DType* out) {
  for (const auto& e : kDTypes)
    if (e.torch_type == t) return *out = e.dtype, true;
  return false;
}

std::string errno_str() { return std::strerror(errno); }

std::string shape_str(const std::vector<int64_t>& shape) {
  std::ostringstream os;
  os << '[';
  for (size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
  os << ']';
  return os.str();
}

std::string tensor_field(const std::string& name) { return "tensor '" + name + "'"; }

// nlohmann keeps the last of duplicate keys silently; a checkpoint with two entries of the same
// name is ambiguous, so a SAX pass tracks the keys of each open object and reports the first
// repeat. Then a plain parse builds the document. (A parse callback would do both in one pass, but
// nlohmann's callback parser rescans the parent object at every object's end: quadratic, 25 s of
// load for the 14692 entries of a quantized 20-layer LLaDA2.0-mini.)
class DuplicateKeys : public json::json_sax_t {
 public:
  std::string duplicate;
  bool null() override { return true; }
  bool boolean(bool) override { return true; }
  bool number_integer(json::number_integer_t) override { return true; }
  bool number_unsigned(json::number_unsigned_t) override { return true; }
  bool number_float(json::number_float_t, const json::string_t&) override { return true; }
  bool string(json::string_t&) override { return true; }
  bool binary(json::binary_t&) override { return true; }
  bool start_object(std::size_t) override { return open_.emplace_back(), true; }
  bool key(json::string_t& k) override {
    if (!open_.back().insert(k).second && duplicate.empty()) duplicate = k;
    return true;
  }
  bool end_object() override { return open_.pop_back(), true; }
  bool start_array(std::size_t) override { return true; }
  bool end_array() override { return true; }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception&) override { return false; }

 private:
  std::vector<std::set<std::string>> open_;
};

json parse_json_strict(const char* begin, const char* end, const std::string& file,
                       const std::string& fix) {
  json j;
  try {
    j = json::parse(begin, end);
  } catch (const json::exception& e) {
    fail(file, "header", std::string("invalid JSON: ") + e.what(), fix);
  }
  DuplicateKeys keys;
  json::sax_parse(begin, end, &keys);
  if (!keys.duplicate.empty()) fail(file, "'" + keys.duplicate + "'", "duplicate key in JSON", fix);
  return j;
}

// Non-negative JSON integer; rejects floats, negatives and strings.
bool json_u64(const json& v, uint64_t* out) {
  if (v.is_number_unsigned()) return *out = v.get<uint64_t>(), true;
  if (v.is_number_integer() && v.get<int64_t>() >= 0)
    return *out = static_cast<uint64_t>(v.get<int64_t>()), true;
  return false;
}

TensorInfo parse_entry(const std::string& file, const std::string& name, const json& v,
                       uint64_t data_size) {
  const std::string field = tensor_field(name);
  if (!v.is_object()) fail(file, field, "entry is not a JSON object", kFixCorrupt);
  TensorInfo t;
  t.name = name;

  auto dt = v.find("dtype");
  if (dt == v.end() || !dt->is_string()) fail(file, field, "missing string \"dtype\"", kFixCorrupt);
  if (!parse_dtype(dt->get<std::string>(), &t.dtype))
    fail(file, field, "unknown dtype \"" + dt->get<std::string>() + "\"",
         "convert the checkpoint to one of F32/BF16/F16/F64/I64/I32/I16/I8/U8/BOOL");

  auto sh = v.find("shape");
  if (sh == v.end() || !sh->is_array()) fail(file, field, "missing array \"shape\"", kFixCorrupt);
  uint64_t numel = 1;
  bool any_zero = false;
  for (size_t i = 0; i < sh->size(); ++i) {
    const json& d = (*sh)[i];
    uint64_t dim = 0;
    if (!json_u64(d, &dim))
      fail(file, field, "shape[" + std::to_string(i) + "] = " + d.dump() +
                            " is not a non-negative integer", kFixCorrupt);
    if (dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      fail(file, field, "shape[" + std::to_string(i) + "] = " + d.dump() + " is too large",
           kFixCorrupt);
    t.shape.push_back(static_cast<int64_t>(dim));
    if (dim == 0) {
      any_zero = true;
    } else if (__builtin_mul_overflow(numel, dim, &numel) ||
               numel > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      fail(file, field, "shape " + sh->dump() + " has too many elements (overflow)", kFixCorrupt);
    }
  }
  if (any_zero) numel = 0;
  uint64_t nbytes = 0;
  if (__builtin_mul_overflow(numel, static_cast<uint64_t>(dtype_size(t.dtype)), &nbytes))
    fail(file, field, "shape " + sh->dump() + " byte size overflows 64 bits", kFixCorrupt);

  auto off = v.find("data_offsets");
  if (off == v.end() || !off->is_array() || off->size() != 2 || !json_u64((*off)[0], &t.begin) ||
      !json_u64((*off)[1], &t.end))
    fail(file, field, "\"data_offsets\" must be [begin, end] of non-negative integers",
         kFixCorrupt);
  if (t.begin > t.end)
    fail(file, field, "data_offsets " + off->dump() + " has begin > end", kFixCorrupt);
  if (t.end > data_size)
    fail(file, field, "data_offsets " + off->dump() + " run past the end of the data section (" +
                          std::to_string(data_size) + " bytes)", kFixTruncated);
  if (t.end - t.begin != nbytes)
    fail(file, field, "data_offsets " + off->dump() + " span " + std::to_string(t.end - t.begin) +
                          " bytes but " + dtype_name(t.dtype) + " " + shape_str(t.shape) +
                          " needs " + std::to_string(nbytes), kFixCorrupt);
  return t;
}

std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path, "", "cannot open: " + errno_str(), "check the path and permissions");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// dtypes

DType dtype_from_torch(torch::ScalarType t) {
  DType d;
  if (!try_from_torch(t, &d))
    fail("", "dtype", std::string("torch dtype ") + c10::toString(t) +
                          " has no safetensors equivalent supported here",
         "convert the tensor to float32, bfloat16, float16 or an integer type first");
  return d;
}
torch::ScalarType dtype_to_torch(DType d) { return entry(d).torch_type; }
std::string dtype_name(DType d) { return entry(d).name; }
size_t dtype_size(DType d) { return entry(d).size; }

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;  // validated on open: cannot overflow
  return n;
}

// ---------------------------------------------------------------------------------------------
// SafetensorsFile

std::shared_ptr<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  std::shared_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->path_ = path;

  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail(path, "", "cannot open: " + errno_str(), "check the path and permissions");
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    fail(path, "", "not a regular file", "point at a .safetensors file");
  }
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  if (file_size < 8) {
    ::close(fd);
    fail(path, "header", "file is " + std::to_string(file_size) +
                             " bytes, shorter than the 8-byte header length", kFixTruncated);
  }
  void* m = ::mmap(nullptr, file_size, PROT_READ, MAP_PRIVATE, fd, 0);
  int map_errno = errno;
  ::close(fd);  // the mapping stays valid without the descriptor
  if (m == MAP_FAILED)
    fail(path, "", std::string("mmap failed: ") + std::strerror(map_errno),
         "check available address space and that the file is on a local filesystem");
  f->map_ = m;  // owned from here: the destructor unmaps even if validation throws
  f->map_size_ = file_size;
  const uint8_t* base = static_cast<const uint8_t*>(m);

  uint64_t n = 0;  // little-endian regardless of host
  for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(base[i]) << (8 * i);
  if (n > file_size - 8)
    fail(path, "header", "header length " + std::to_string(n) + " runs past the end of the file (" +
                             std::to_string(file_size) + " bytes)", kFixTruncated);
  if (n > kMaxHeaderBytes)
    fail(path, "header", "header length " + std::to_string(n) + " exceeds the 100 MiB limit",
         kFixCorrupt);
  f->data_base_ = base + 8 + n;
  f->data_size_ = file_size - 8 - n;

  const char* hb = reinterpret_cast<const char*>(base + 8);
  json header = parse_json_strict(hb, hb + n, path, kFixCorrupt);
  if (!header.is_object()) fail(path, "header", "is not a JSON object", kFixCorrupt);

  for (const auto& [key, value] : header.items()) {
    if (key == "__metadata__") {
      if (!value.is_object()) fail(path, "__metadata__", "is not a JSON object", kFixCorrupt);
      for (const auto& [mk, mv] : value.items()) {
        if (!mv.is_string())
          fail(path, "__metadata__." + mk, "value is not a string", kFixCorrupt);
        f->metadata_[mk] = mv.get<std::string>();
      }
      continue;
    }
    f->tensors_.push_back(parse_entry(path, key, value, f->data_size_));
  }

  std::sort(f->tensors_.begin(), f->tensors_.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return std::tie(a.begin, a.end, a.name) < std::tie(b.begin, b.end, b.name);
  });
  // Zero-byte tensors occupy nothing, so they neither overlap nor fill gaps.
  uint64_t cursor = 0, gap_bytes = 0;
  const TensorInfo* prev = nullptr;
  for (const TensorInfo& t : f->tensors_) {
    if (t.nbytes() == 0) continue;
    if (t.begin < cursor)
      fail(path, tensor_field(t.name), "bytes [" + std::to_string(t.begin) + ", " +
                                           std::to_string(t.end) + ") overlap tensor '" +
                                           prev->name + "' [" + std::to_string(prev->begin) +
                                           ", " + std::to_string(prev->end) + ")", kFixCorrupt);
    gap_bytes += t.begin - cursor;
    cursor = t.end;
    prev = &t;
  }
  gap_bytes += f->data_size_ - cursor;
  // The reference reader rejects gaps; they are harmless for reading, so only warn.
  if (gap_bytes > 0)
    LOG_WARN(path << ": " << gap_bytes << " byte(s) of the data section belong to no tensor");

  for (size_t i = 0; i < f->tensors_.size(); ++i) f->index_[f->tensors_[i].name] = i;
  LOG_DEBUG("opened " << path << ": " << f->tensors_.size() << " tensors, " << f->data_size_
                      << " data bytes");
  return f;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_ != nullptr) ::munmap(map_, map_size_);
}

const TensorInfo* SafetensorsFile::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

const TensorInfo& SafetensorsFile::require(const std::string& name) const {
  const TensorInfo* t = find(name);
  if (t == nullptr)
    fail(path_, tensor_field(name), "not found in checkpoint",
         "check that the model config matches this checkpoint");
  return *t;
}

const uint8_t* SafetensorsFile::data(const TensorInfo& t) const { return data_base_ + t.begin; }

void release_pages(const void* p, std::size_t bytes) {
  if (bytes == 0) return;
  const auto page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  // Whole pages inside the range only: a page shared with a neighbour stays (a misaligned tensor's
  // heap copy must not drop another allocation's page).
  const auto lo = (reinterpret_cast<uintptr_t>(p) + page - 1) / page * page;
  const auto hi = (reinterpret_cast<uintptr_t>(p) + bytes) / page * page;
  // Advice only: a failure leaves the pages resident, which is merely what happens without it.
  if (hi > lo) ::madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_DONTNEED);
}

void SafetensorsFile::release(const std::string& name) const {
  const TensorInfo& t = require(name);
  release_pages(data(t), t.nbytes());
}

torch::Tensor SafetensorsFile::get(const std::string& name) const {
  const TensorInfo& t = require(name);
  auto opts = torch::TensorOptions().dtype(dtype_to_torch(t.dtype)).device(torch::kCPU);
  if (t.nbytes() == 0) return torch::empty(t.shape, opts);
  const uint8_t* p = data(t);
  if (reinterpret_cast<uintptr_t>(p) % dtype_size(t.dtype) != 0) {
    // Unpadded header: typed loads from this address would be misaligned, so copy out.
    LOG_DEBUG(path_ << ": " << name << " is misaligned; copying");
    torch::Tensor out = torch::empty(t.shape, opts);
    std::memcpy(out.data_ptr(), p, t.nbytes());
    return out;
  }
  std::shared_ptr<const SafetensorsFile> keep_alive = shared_from_this();
  return torch::from_blob(const_cast<uint8_t*>(p), t.shape, [keep_alive](void*) {}, opts);
}

torch::Tensor SafetensorsFile::get(const std::string& name,
                                   const std::vector<int64_t>& expected_shape) const {
  const TensorInfo& t = require(name);
  if (t.shape != expected_shape)
    fail(path_, tensor_field(name), "shape " + shape_str(t.shape) + " but expected " +
                                        shape_str(expected_shape),
         "check that the model config matches this checkpoint");
  return get(name);
}

// ---------------------------------------------------------------------------------------------
// SafetensorsSet

SafetensorsSet SafetensorsSet::open(const std::string& dir_or_file) {
  std::error_code ec;
  fs::path p(dir_or_file);
  SafetensorsSet set;
  bool use_index = false;
  if (fs::is_directory(p, ec)) {
    if (fs::exists(p / kIndexName, ec)) {
      p /= kIndexName;
      use_index = true;
    } else if (fs::exists(p / kSingleName, ec)) {
      p /= kSingleName;
    } else {
      fail(dir_or_file, "", std::string("directory has neither ") + kSingleName + " nor " +
                                kIndexName, "point at a checkpoint directory or .safetensors file");
    }
  } else if (!fs::exists(p, ec)) {
    fail(dir_or_file, "", "does not exist", "check the checkpoint path");
  } else {
    const std::string s = p.string();
    use_index = s.size() >= 5 && s.compare(s.size() - 5, 5, ".json") == 0;
  }
  set.source_ = p.string();

  if (!use_index) {
    set.files_.push_back(SafetensorsFile::open(set.source_));
    for (const TensorInfo& t : set.files_[0]->tensors()) set.where_[t.name] = 0;
    return set;
  }

  const std::string& index_path = set.source_;
  const char* fix_index = "re-export the checkpoint or repair the index file";
  std::string text = read_text_file(index_path);
  json index = parse_json_strict(text.data(), text.data() + text.size(), index_path, fix_index);
  if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object())
    fail(index_path, "weight_map", "missing or not a JSON object", fix_index);

  const fs::path base_dir = p.parent_path();
  std::map<std::string, size_t> shard_ids;  // shard file name -> index into files_
  for (const auto& [name, shard] : index["weight_map"].items()) {
    if (!shard.is_string() || shard.get<std::string>().empty())
      fail(index_path, "weight_map." + name, "shard is not a non-empty string", fix_index);
    const std::string shard_name = shard.get<std::string>();
    auto it = shard_ids.find(shard_name);
    if (it == shard_ids.end()) {
      const fs::path shard_path = base_dir / shard_name;
      if (!fs::is_regular_file(shard_path, ec))
        fail(index_path, "weight_map." + name, "shard " + shard_path.string() + " does not exist",
             "the checkpoint is incomplete: download the missing shard");
      set.files_.push_back(SafetensorsFile::open(shard_path.string()));
      it = shard_ids.emplace(shard_name, set.files_.size() - 1).first;
    }
    if (!set.files_[it->second]->has(name))
      fail(index_path, "weight_map." + name,
           "shard " + set.files_[it->second]->path() + " does not contain this tensor", fix_index);
    set.where_[name] = it->second;
  }

  // A tensor stored in two shards makes the checkpoint ambiguous; unlisted ones are unreachable.
  std::map<std::string, size_t> seen;
  size_t unlisted = 0;
  for (size_t i = 0; i < set.files_.size(); ++i) {
    for (const TensorInfo& t : set.files_[i]->tensors()) {
      auto [it, fresh] = seen.emplace(t.name, i);
      if (!fresh)
        fail(index_path, tensor_field(t.name), "stored in two shards: " +
                                                   set.files_[it->second]->path() + " and " +
                                                   set.files_[i]->path(), fix_index);
      if (set.where_.count(t.name) == 0) ++unlisted;
    }
  }
  if (unlisted > 0)
    LOG_WARN(index_path << ": " << unlisted
                        << " tensor(s) in the shards are not in weight_map and are ignored");
  return set;
}

const SafetensorsFile& SafetensorsSet::shard_of(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end())
    fail(source_, tensor_field(name), "not found in checkpoint",
         "check that the model config matches this checkpoint");
  return *files_[it->second];
}

torch::Tensor SafetensorsSet::get(const std::string& name) const { return shard_of(name).get(name); }

void SafetensorsSet::release(const std::string& name) const { shard_of(name).release(name); }

torch::Tensor SafetensorsSet::get(const std::string& name,
                                  const std::vector<int64_t>& expected_shape) const {
  return shard_of(name).get(name, expected_shape);
}

const TensorInfo& SafetensorsSet::info(const std::string& name) const {
  return *shard_of(name).find(name);
}

std::vector<std::string> SafetensorsSet::names() const {
  std::vector<std::string> out;
  out.reserve(where_.size());
  for (const auto& kv : where_) out.push_back(kv.first);  // std::map: already sorted
  return out;
}

std::string SafetensorsSet::where(const std::string& name) const { return shard_of(name).path(); }

uint64_t SafetensorsSet::total_bytes() const {
  uint64_t total = 0;
  for (const auto& [name, id] : where_) total += files_[id]->find(name)->nbytes();
  return total;
}

}  // namespace ecdlm::io
