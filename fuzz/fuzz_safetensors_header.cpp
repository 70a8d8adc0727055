// libFuzzer target: SafetensorsFile::open on arbitrary bytes (header length, strict JSON, dtypes,
// shapes, offsets, overlaps), then get() on every tensor of a file that opened.
// Any input must either open or raise UserError; what opens must honour the validated invariants
// (checked here, so a reader bug that stays inside the mapping's last page is still caught).
// Build and run: scripts/fuzz.sh safetensors_header [SECONDS]
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "ecdlm/io/safetensors.h"
#include "ecdlm/util/error.h"
#include "ecdlm/util/log.h"

namespace {

void check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "invariant violated: %s\n", what);
    std::abort();
  }
}

// The input goes to an in-memory file so the real open() path (open, fstat, mmap) runs unchanged.
std::string memfd_path(const uint8_t* data, size_t size) {
  static const int fd = memfd_create("fuzz.safetensors", MFD_CLOEXEC);
  check(fd >= 0, "memfd_create");
  check(::ftruncate(fd, 0) == 0, "ftruncate");
  size_t done = 0;
  while (done < size) {
    const ssize_t n = ::pwrite(fd, data + done, size - done, static_cast<off_t>(done));
    check(n > 0, "pwrite");
    done += static_cast<size_t>(n);
  }
  return "/proc/self/fd/" + std::to_string(fd);
}

void exercise(const ecdlm::io::SafetensorsFile& f, size_t file_size, uint64_t header_len) {
  using ecdlm::io::dtype_size;
  check(8 + header_len + f.data_size() == file_size, "data section = file - 8 - header");
  const ecdlm::io::TensorInfo* prev = nullptr;
  for (const auto& t : f.tensors()) {
    check(t.begin <= t.end && t.end <= f.data_size(), "offsets inside the data section");
    check(t.nbytes() == static_cast<uint64_t>(t.numel()) * dtype_size(t.dtype), "byte size");
    if (t.nbytes() > 0) {
      check(prev == nullptr || prev->end <= t.begin, "non-empty tensors do not overlap");
      prev = &t;
    }
    check(f.find(t.name) == &t, "find() returns the listed entry");
    const torch::Tensor x = f.get(t.name);
    check(x.numel() == t.numel() && x.sizes().vec() == t.shape, "get() shape");
    check(static_cast<uint64_t>(x.numel() * x.element_size()) == t.nbytes(), "get() bytes");
    // memcmp is ASan-checked over both ranges: get() must view exactly the validated bytes.
    if (t.nbytes() > 0)
      check(std::memcmp(x.data_ptr(), f.data(t), t.nbytes()) == 0, "get() returns the file bytes");
    (void)f.get(t.name, t.shape);
    std::vector<int64_t> wrong = t.shape;
    wrong.push_back(1);
    try {
      (void)f.get(t.name, wrong);
      check(false, "get() with a wrong shape must throw");
    } catch (const ecdlm::UserError&) {
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  ecdlm::set_log_level(ecdlm::LogLevel::kError);  // gap warnings would flood the output
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = memfd_path(data, size);
  uint64_t header_len = 0;
  for (size_t i = 0; i < 8 && i < size; ++i) header_len |= static_cast<uint64_t>(data[i]) << (8 * i);
  try {
    auto f = ecdlm::io::SafetensorsFile::open(path);
    exercise(*f, size, header_len);
  } catch (const ecdlm::UserError&) {
  }
  return 0;
}
