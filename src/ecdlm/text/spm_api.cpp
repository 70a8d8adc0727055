#include "ecdlm/text/spm_api.h"

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <unistd.h>

#include <filesystem>
#include <mutex>

#include "ecdlm/util/error.h"

namespace ecdlm::text::spm {
namespace fs = std::filesystem;

namespace {

std::vector<std::string> candidate_paths() {
  std::vector<std::string> out;
  if (const char* env = std::getenv("ECDLM_SPM_MODULE")) out.emplace_back(env);
  char exe[4096];
  ssize_t n = ::readlink("/proc/self/exe", exe, sizeof(exe) - 1);
  if (n > 0) {
    exe[n] = '\0';
    out.push_back((fs::path(exe).parent_path() / "libecdlm_spm.so").string());
  }
#ifdef ECDLM_SPM_MODULE_PATH
  out.emplace_back(ECDLM_SPM_MODULE_PATH);
#endif
  return out;
}

template <typename F>
void bind_symbol(void* h, const char* name, F& fn, const std::string& path) {
  fn = reinterpret_cast<F>(::dlsym(h, name));
  if (!fn) fail(path, name, "symbol missing from the SentencePiece module", "rebuild ecdlm");
}

}  // namespace

const Api& api() {
  static std::once_flag once;
  static Api a{};
  std::call_once(once, [] {
    std::string tried, last_err;
    void* h = nullptr;
    std::string path;
    for (const auto& p : candidate_paths()) {
      tried += (tried.empty() ? "" : ", ") + p;
      if (!fs::exists(p)) continue;
      h = ::dlmopen(LM_ID_NEWLM, p.c_str(), RTLD_NOW | RTLD_LOCAL);
      if (h) {
        path = p;
        break;
      }
      last_err = ::dlerror();
    }
    if (!h)
      fail("libecdlm_spm.so", "", "cannot load the SentencePiece module (tried " + tried + ") " + last_err,
           "build the ecdlm_spm target, or set ECDLM_SPM_MODULE to its path");
    bind_symbol(h, "ecdlm_spm_train", a.train, path);
    bind_symbol(h, "ecdlm_spm_load", a.load, path);
    bind_symbol(h, "ecdlm_spm_free", a.free, path);
    bind_symbol(h, "ecdlm_spm_encode", a.encode, path);
    bind_symbol(h, "ecdlm_spm_decode", a.decode, path);
    bind_symbol(h, "ecdlm_spm_piece_to_id", a.piece_to_id, path);
    bind_symbol(h, "ecdlm_spm_id_to_piece", a.id_to_piece, path);
    bind_symbol(h, "ecdlm_spm_vocab_size", a.vocab_size, path);
    bind_symbol(h, "ecdlm_spm_unk_id", a.unk_id, path);
    bind_symbol(h, "ecdlm_spm_set_seed", a.set_seed, path);
  });
  return a;
}

}  // namespace ecdlm::text::spm
