// SentencePiece behind a dlopen'ed module.
//
// Why: Debian's libsentencepiece statically embeds its own protobuf and exports its symbols;
// libtorch links the system libprotobuf. Linking both into one process crashes at start-up
// (protobuf descriptor registration resolves into the wrong copy). The module
// (src/spm_module) is loaded with dlmopen into its own link namespace (own libstdc++ too; DEEPBIND
// is not enough: it breaks std::cerr inside SentencePiece), so the two never meet. The API is
// plain C with callbacks, so no allocation crosses the namespace boundary.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

extern "C" {
// All functions return 0 on success; on failure they return non-zero and write the message
// into err (NUL-terminated, at most err_len bytes).
typedef struct EcdlmSpm EcdlmSpm;
typedef void (*ecdlm_spm_ids_cb)(void* user, const int32_t* ids, int64_t n);
typedef void (*ecdlm_spm_str_cb)(void* user, const char* s, int64_t n);
}

namespace ecdlm::text::spm {

// Loaded once per process; throws UserError if the module cannot be found or loaded.
struct Api {
  int (*train)(const char* args, char* err, int64_t err_len);
  int (*load)(const char* path, EcdlmSpm** out, char* err, int64_t err_len);
  void (*free)(EcdlmSpm*);
  int (*encode)(const EcdlmSpm*, const char* text, int64_t len, ecdlm_spm_ids_cb, void* user);
  int (*decode)(const EcdlmSpm*, const int32_t* ids, int64_t n, ecdlm_spm_str_cb, void* user);
  int32_t (*piece_to_id)(const EcdlmSpm*, const char* piece);
  int (*id_to_piece)(const EcdlmSpm*, int32_t id, ecdlm_spm_str_cb, void* user);
  int64_t (*vocab_size)(const EcdlmSpm*);
  int32_t (*unk_id)(const EcdlmSpm*);
  void (*set_seed)(uint32_t seed);
};
const Api& api();

}  // namespace ecdlm::text::spm
