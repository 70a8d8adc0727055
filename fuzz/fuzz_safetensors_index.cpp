// libFuzzer target: SafetensorsSet::open on an arbitrary model.safetensors.index.json next to
// two valid shards, then info/where/get on every tensor the index maps.
// Any input must either open or raise UserError; what opens must map each name to the shard
// that holds it.
// Build and run: scripts/fuzz.sh safetensors_index [SECONDS]
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

#include "ecdlm/io/safetensors.h"
#include "ecdlm/util/error.h"
#include "ecdlm/util/log.h"

namespace fs = std::filesystem;

namespace {

void check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "invariant violated: %s\n", what);
    std::abort();
  }
}

std::string g_dir;  // holds the shards; the index is rewritten per input

void remove_dir() {
  std::error_code ec;
  fs::remove_all(g_dir, ec);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  ecdlm::set_log_level(ecdlm::LogLevel::kError);  // unlisted-tensor warnings would flood
  std::string tmpl = (fs::temp_directory_path() / "ecdlm_fuzz_index_XXXXXX").string();
  check(::mkdtemp(tmpl.data()) != nullptr, "mkdtemp");
  g_dir = tmpl;
  std::atexit(remove_dir);
  // The names the seeds use: a, b in shard 1; c, d in shard 2 (mixed dtypes, a scalar, an empty).
  ecdlm::io::save_safetensors(g_dir + "/model-00001-of-00002.safetensors",
                              {{"a", torch::arange(6, torch::kFloat).reshape({2, 3})},
                               {"b", torch::tensor(int64_t{7})}});
  ecdlm::io::save_safetensors(g_dir + "/model-00002-of-00002.safetensors",
                              {{"c", torch::ones({3}, torch::kBFloat16)},
                               {"d", torch::zeros({0, 2}, torch::kInt)}});
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  {
    std::ofstream out(g_dir + "/model.safetensors.index.json", std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
    check(static_cast<bool>(out), "write index");
  }
  try {
    const auto set = ecdlm::io::SafetensorsSet::open(g_dir);
    uint64_t total = 0;
    for (const auto& name : set.names()) {
      const auto& info = set.info(name);
      const std::string shard = set.where(name);
      bool found = false;
      for (const auto& f : set.files())
        if (f->path() == shard) found = f->find(name) == &info;
      check(found, "where()/info() agree with the shard's own entry");
      const torch::Tensor x = set.get(name, info.shape);
      check(static_cast<uint64_t>(x.numel() * x.element_size()) == info.nbytes(), "get() bytes");
      total += info.nbytes();
    }
    check(total == set.total_bytes(), "total_bytes() sums the mapped tensors");
  } catch (const ecdlm::UserError&) {
  }
  return 0;
}
