// The only translation unit that includes SentencePiece; built as a MODULE and dlopen'ed
// (see src/ecdlm/text/spm_api.h for why).
#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <cstring>
#include <string>
#include <vector>

namespace sentencepiece::logging {
void SetMinLogLevel(int v);  // exported by libsentencepiece, not declared in its public headers
}

// Train() logs its command line before it parses --minloglevel: silence it up front.
__attribute__((constructor)) static void ecdlm_spm_quiet() { sentencepiece::logging::SetMinLogLevel(3); }

extern "C" {
typedef void (*ecdlm_spm_ids_cb)(void* user, const int32_t* ids, int64_t n);
typedef void (*ecdlm_spm_str_cb)(void* user, const char* s, int64_t n);
struct EcdlmSpm {
  sentencepiece::SentencePieceProcessor sp;
};

static void put_err(const std::string& msg, char* err, int64_t err_len) {
  if (!err || err_len <= 0) return;
  std::strncpy(err, msg.c_str(), static_cast<size_t>(err_len - 1));
  err[err_len - 1] = '\0';
}

__attribute__((visibility("default"))) int ecdlm_spm_train(const char* args, char* err, int64_t err_len) {
  auto st = sentencepiece::SentencePieceTrainer::Train(args);
  if (!st.ok()) {
    put_err(st.ToString(), err, err_len);
    return 1;
  }
  return 0;
}

__attribute__((visibility("default"))) int ecdlm_spm_load(const char* path, EcdlmSpm** out, char* err,
                                                          int64_t err_len) {
  auto* h = new EcdlmSpm();
  auto st = h->sp.Load(path);
  if (!st.ok()) {
    put_err(st.ToString(), err, err_len);
    delete h;
    return 1;
  }
  *out = h;
  return 0;
}

__attribute__((visibility("default"))) void ecdlm_spm_free(EcdlmSpm* h) { delete h; }

__attribute__((visibility("default"))) int ecdlm_spm_encode(const EcdlmSpm* h, const char* text, int64_t len,
                                                            ecdlm_spm_ids_cb cb, void* user) {
  std::vector<int> ids;
  if (!h->sp.Encode(std::string(text, static_cast<size_t>(len)), &ids).ok()) return 1;
  std::vector<int32_t> out(ids.begin(), ids.end());
  cb(user, out.data(), static_cast<int64_t>(out.size()));
  return 0;
}

__attribute__((visibility("default"))) int ecdlm_spm_decode(const EcdlmSpm* h, const int32_t* ids, int64_t n,
                                                            ecdlm_spm_str_cb cb, void* user) {
  std::vector<int> v(ids, ids + n);
  std::string s;
  if (!h->sp.Decode(v, &s).ok()) return 1;
  cb(user, s.data(), static_cast<int64_t>(s.size()));
  return 0;
}

__attribute__((visibility("default"))) int32_t ecdlm_spm_piece_to_id(const EcdlmSpm* h, const char* piece) {
  return h->sp.PieceToId(piece);
}

__attribute__((visibility("default"))) int ecdlm_spm_id_to_piece(const EcdlmSpm* h, int32_t id,
                                                                 ecdlm_spm_str_cb cb, void* user) {
  if (id < 0 || id >= h->sp.GetPieceSize()) return 1;
  const std::string& p = h->sp.IdToPiece(id);
  cb(user, p.data(), static_cast<int64_t>(p.size()));
  return 0;
}

__attribute__((visibility("default"))) int64_t ecdlm_spm_vocab_size(const EcdlmSpm* h) {
  return h->sp.GetPieceSize();
}

__attribute__((visibility("default"))) int32_t ecdlm_spm_unk_id(const EcdlmSpm* h) { return h->sp.unk_id(); }

__attribute__((visibility("default"))) void ecdlm_spm_set_seed(uint32_t seed) {
  sentencepiece::SetRandomGeneratorSeed(seed);
}
}
