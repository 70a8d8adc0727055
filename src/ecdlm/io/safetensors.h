// Safetensors checkpoints: a validating, zero-copy mmap reader (single file or HF-sharded set)
// and an atomic writer. Format: u64 LE header length N, N bytes of JSON header, then the raw
// little-endian tensor bytes; data_offsets in the header are relative to the data section.
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace ecdlm::io {

enum class DType { F32, BF16, F16, I64, I32, U8, BOOL, F64, I16, I8 };

DType dtype_from_torch(torch::ScalarType t);  // throws UserError for unsupported types
torch::ScalarType dtype_to_torch(DType d);
std::string dtype_name(DType d);  // "F32", "BF16", ...
size_t dtype_size(DType d);       // bytes per element

struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // byte offsets relative to the data section
  int64_t numel() const;
  uint64_t nbytes() const { return end - begin; }
};

// One mmap'd .safetensors file. The header is fully validated on open (lengths, JSON, dtypes,
// shapes, offsets, overlaps, duplicates); every problem throws ecdlm::UserError.
class SafetensorsFile : public std::enable_shared_from_this<SafetensorsFile> {
 public:
  static std::shared_ptr<SafetensorsFile> open(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }  // sorted by begin offset
  const TensorInfo* find(const std::string& name) const;               // nullptr if absent
  bool has(const std::string& name) const { return find(name) != nullptr; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  uint64_t data_size() const { return data_size_; }

  // Zero-copy CPU view of the mapping; the tensor keeps this file mapped while alive.
  // The mapping is PROT_READ: writing into the tensor crashes, so clone before any in-place op.
  // (A tensor whose start is misaligned for its dtype is copied instead; never happens for
  // files whose header is padded to 8 bytes, as every writer does.) Throws if absent.
  torch::Tensor get(const std::string& name) const;
  // Same, plus a shape check whose error names file, tensor, expected and actual shape.
  torch::Tensor get(const std::string& name, const std::vector<int64_t>& expected_shape) const;
  // Raw bytes of a tensor inside the mapping (t must come from tensors()/find() of this file).
  const uint8_t* data(const TensorInfo& t) const;
  // Unmaps a tensor's pages from this process (the page cache keeps them; a later get() faults
  // them back in), so a pass over a checkpoint larger than memory keeps a small resident set.
  void release(const std::string& name) const;

 private:
  SafetensorsFile() = default;
  const TensorInfo& require(const std::string& name) const;

  std::string path_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  const uint8_t* data_base_ = nullptr;  // start of the data section
  uint64_t data_size_ = 0;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t> index_;  // name -> position in tensors_
  std::map<std::string, std::string> metadata_;
};

// A checkpoint: `model.safetensors`, or shards listed by `model.safetensors.index.json`
// ({"metadata":{...},"weight_map":{name: shard_file}}). A directory prefers the index.
class SafetensorsSet {
 public:
  static SafetensorsSet open(const std::string& dir_or_file);
  bool has(const std::string& name) const { return where_.count(name) != 0; }
  torch::Tensor get(const std::string& name) const;
  torch::Tensor get(const std::string& name, const std::vector<int64_t>& expected_shape) const;
  const TensorInfo& info(const std::string& name) const;
  std::vector<std::string> names() const;  // sorted
  std::string where(const std::string& name) const;  // path of the shard holding it
  uint64_t total_bytes() const;
  const std::vector<std::shared_ptr<SafetensorsFile>>& files() const { return files_; }
  const std::string& source() const { return source_; }  // the file or index that was opened
  // See SafetensorsFile::release: a streaming conversion copies each tensor out, then releases
  // it, so its resident set peaks at about one tensor.
  void release(const std::string& name) const;

 private:
  const SafetensorsFile& shard_of(const std::string& name) const;

  std::string source_;
  std::vector<std::shared_ptr<SafetensorsFile>> files_;
  std::map<std::string, size_t> where_;  // name -> index into files_
};

// A tensor written later: `make` runs when its bytes are due and must return exactly `dtype` and
// `shape`, so a writer holds one tensor in memory at a time (conversions of models bigger than RAM).
struct PendingTensor {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  std::function<torch::Tensor()> make;
  uint64_t nbytes() const;
};
PendingTensor pending(const std::string& name, const torch::Tensor& t);  // wraps a ready tensor

// Writes tensors (CPU, any DType above; made contiguous) atomically: `path.tmp.<pid>`, fsync,
// rename. Header keys sorted, header padded with spaces so the data starts 8-byte aligned,
// data packed contiguously in the given order. Metadata goes to "__metadata__".
void save_safetensors(const std::string& path,
                      const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata = {});
void save_safetensors_streamed(const std::string& path, const std::vector<PendingTensor>& tensors,
                               const std::map<std::string, std::string>& metadata = {});

// HF-style sharding into `dir`: model-00001-of-0000N.safetensors shards of at most
// max_shard_bytes of tensor data each (a single larger tensor gets its own shard) plus
// model.safetensors.index.json; a plain `model.safetensors` when everything fits in one.
void save_safetensors_sharded(const std::string& dir,
                              const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                              uint64_t max_shard_bytes,
                              const std::map<std::string, std::string>& metadata = {});
void save_safetensors_sharded_streamed(const std::string& dir, const std::vector<PendingTensor>& tensors,
                                       uint64_t max_shard_bytes,
                                       const std::map<std::string, std::string>& metadata = {});

// Hands the resident pages wholly inside [p, p + bytes) of a read-only file mapping back
// (MADV_DONTNEED: a later read faults them in again from the file). Advice only.
void release_pages(const void* p, std::size_t bytes);

}  // namespace ecdlm::io
