// Safetensors writers: atomic single files and HF-style shards, streamed one tensor at a time.
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "ecdlm/io/safetensors.h"
#include "ecdlm/util/error.h"
#include "ecdlm/util/log.h"

namespace ecdlm::io {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

constexpr const char* kIndexName = "model.safetensors.index.json";
constexpr const char* kSingleName = "model.safetensors";

std::string errno_str() { return std::strerror(errno); }
std::string tensor_field(const std::string& name) { return "tensor '" + name + "'"; }

// `path.tmp.<pid>` + fsync + rename, so readers never see a partial file. `produce` calls the
// write function for each chunk in order.
class AtomicFile {
 public:
  explicit AtomicFile(const std::string& path) : path_(path), tmp_(path + ".tmp." + std::to_string(::getpid())) {
    fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd_ < 0)
      fail(path_, "", "cannot create " + tmp_ + ": " + errno_str(),
           "check that the directory exists and is writable");
  }
  ~AtomicFile() {
    if (fd_ >= 0) {  // not committed: an exception is unwinding
      ::close(fd_);
      ::unlink(tmp_.c_str());
    }
  }
  void write(const void* ptr, size_t len) {
    const char* p = static_cast<const char*>(ptr);
    while (len > 0) {
      // Linux caps a single write at ~2 GiB; loop for partial writes and EINTR.
      ssize_t n = ::write(fd_, p, std::min<size_t>(len, 1u << 30));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) abort("write to " + tmp_ + " failed");
      p += n;
      len -= static_cast<size_t>(n);
    }
  }
  void commit() {
    if (::fsync(fd_) != 0) abort("fsync of " + tmp_ + " failed");
    const int fd = fd_;
    fd_ = -1;
    if (::close(fd) != 0) {
      std::string err = errno_str();
      ::unlink(tmp_.c_str());
      fail(path_, "", "close of " + tmp_ + " failed: " + err, "check free disk space");
    }
    if (::rename(tmp_.c_str(), path_.c_str()) != 0) {
      std::string err = errno_str();
      ::unlink(tmp_.c_str());
      fail(path_, "", "rename from " + tmp_ + " failed: " + err, "check directory permissions");
    }
    // Persist the rename itself; best effort (some filesystems refuse fsync on directories).
    std::string dir = fs::path(path_).parent_path().string();
    int dfd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
      ::fsync(dfd);
      ::close(dfd);
    }
  }

 private:
  [[noreturn]] void abort(const std::string& what) {
    std::string err = errno_str();
    ::close(fd_);
    fd_ = -1;
    ::unlink(tmp_.c_str());
    fail(path_, "", what + ": " + err, "check free disk space and permissions");
  }
  std::string path_, tmp_;
  int fd_ = -1;
};

void write_index(const fs::path& d, const json& weight_map, const std::map<std::string, std::string>& metadata,
                 uint64_t total) {
  json meta = json::object();
  for (const auto& [k, v] : metadata) meta[k] = v;
  meta["total_size"] = total;
  const std::string text = json{{"metadata", meta}, {"weight_map", weight_map}}.dump(2) + "\n";
  AtomicFile f((d / kIndexName).string());
  f.write(text.data(), text.size());
  f.commit();
}

}  // namespace

uint64_t PendingTensor::nbytes() const {
  uint64_t n = dtype_size(dtype);
  for (auto s : shape) n *= static_cast<uint64_t>(s);
  return n;
}

PendingTensor pending(const std::string& name, const torch::Tensor& t) {
  PendingTensor p;
  p.name = name;
  if (!t.defined()) fail("", tensor_field(name), "tensor is undefined", "pass a real tensor");
  p.dtype = dtype_from_torch(t.scalar_type());
  p.shape = t.sizes().vec();
  p.make = [t] { return t; };
  return p;
}

void save_safetensors_streamed(const std::string& path, const std::vector<PendingTensor>& tensors,
                               const std::map<std::string, std::string>& metadata) {
  json header = json::object();  // std::map-backed: keys come out sorted
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const auto& t : tensors) {
    const std::string field = tensor_field(t.name);
    if (t.name == "__metadata__") fail(path, field, "name is reserved", "rename the tensor");
    if (header.contains(t.name)) fail(path, field, "duplicate tensor name", "rename the tensor");
    const uint64_t nbytes = t.nbytes();
    header[t.name] = {{"dtype", dtype_name(t.dtype)},
                      {"shape", t.shape},
                      {"data_offsets", json::array({offset, offset + nbytes})}};
    offset += nbytes;
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const json::exception& e) {
    fail(path, "header", std::string("cannot encode header: ") + e.what(),
         "use valid UTF-8 tensor names and metadata");
  }
  text.append((8 - text.size() % 8) % 8, ' ');  // data section starts 8-byte aligned
  uint8_t len_le[8];
  for (int i = 0; i < 8; ++i) len_le[i] = static_cast<uint8_t>(uint64_t(text.size()) >> (8 * i));

  AtomicFile f(path);
  f.write(len_le, 8);
  f.write(text.data(), text.size());
  for (const auto& t : tensors) {
    const std::string field = tensor_field(t.name);
    torch::Tensor c = t.make();
    if (!c.defined()) fail(path, field, "tensor is undefined", "pass a real tensor");
    if (!c.device().is_cpu())
      fail(path, field, "tensor is on " + c.device().str() + ", not CPU", "call .cpu() first");
    if (c.layout() != torch::kStrided)
      fail(path, field, "sparse tensors are not supported", "call .to_dense() first");
    if (dtype_from_torch(c.scalar_type()) != t.dtype || c.sizes().vec() != t.shape)
      fail(path, field, "the tensor produced differs in dtype or shape from the one declared",
           "this is a bug in the caller");
    c = c.detach().resolve_conj().resolve_neg().contiguous();
    if (c.numel() > 0) f.write(c.data_ptr(), t.nbytes());
  }
  f.commit();
}

void save_safetensors(const std::string& path,
                      const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  std::vector<PendingTensor> p;
  p.reserve(tensors.size());
  for (const auto& [name, t] : tensors) {
    if (!t.defined()) fail(path, tensor_field(name), "tensor is undefined", "pass a real tensor");
    try {
      p.push_back(pending(name, t));
    } catch (const UserError&) {
      fail(path, tensor_field(name), std::string("dtype ") + c10::toString(t.scalar_type()) + " unsupported",
           "convert to float32, bfloat16, float16 or an integer type first");
    }
  }
  save_safetensors_streamed(path, p, metadata);
}

void save_safetensors_sharded_streamed(const std::string& dir, const std::vector<PendingTensor>& tensors,
                                       uint64_t max_shard_bytes,
                                       const std::map<std::string, std::string>& metadata) {
  if (max_shard_bytes == 0) fail(dir, "max_shard_bytes", "must be positive", "pass a shard size");
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) fail(dir, "", "cannot create directory: " + ec.message(), "check permissions");

  // Greedy packing in order, as HF does; a tensor larger than the cap gets a shard of its own.
  std::vector<std::vector<PendingTensor>> shards;
  uint64_t current = 0, total = 0;
  for (const auto& t : tensors) {
    const uint64_t nbytes = t.nbytes();
    if (shards.empty() || (current > 0 && current + nbytes > max_shard_bytes)) {
      shards.emplace_back();
      current = 0;
    }
    shards.back().push_back(t);
    current += nbytes;
    total += nbytes;
  }

  const fs::path d(dir);
  if (shards.size() <= 1) {
    save_safetensors_streamed((d / kSingleName).string(), tensors, metadata);
    // A leftover index would shadow the new single file on open.
    if (fs::exists(d / kIndexName, ec)) {
      LOG_WARN("removing stale " << (d / kIndexName).string());
      fs::remove(d / kIndexName, ec);
    }
    return;
  }
  if (fs::exists(d / kSingleName, ec))
    LOG_WARN((d / kSingleName).string() << " is stale: the index written next takes precedence");

  json weight_map = json::object();
  for (size_t i = 0; i < shards.size(); ++i) {
    char name[64];
    std::snprintf(name, sizeof(name), "model-%05zu-of-%05zu.safetensors", i + 1, shards.size());
    save_safetensors_streamed((d / name).string(), shards[i], metadata);
    for (const auto& t : shards[i]) weight_map[t.name] = name;
  }
  // Index last: a crash mid-save never leaves an index pointing at missing shards.
  write_index(d, weight_map, metadata, total);
}

void save_safetensors_sharded(const std::string& dir,
                              const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                              uint64_t max_shard_bytes,
                              const std::map<std::string, std::string>& metadata) {
  std::vector<PendingTensor> p;
  p.reserve(tensors.size());
  for (const auto& [name, t] : tensors) p.push_back(pending(name, t));
  save_safetensors_sharded_streamed(dir, p, max_shard_bytes, metadata);
}

}  // namespace ecdlm::io
