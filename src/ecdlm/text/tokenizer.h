// Tokenizer interface and the SentencePiece implementation trained by `ecdlm prepare-data`.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

extern "C" {
typedef struct EcdlmSpm EcdlmSpm;
}

namespace ecdlm::text {

// Special tokens every ecdlm tokenizer provides. They are ordinary text pieces: writing
// "<|mask|>" in a prompt yields the mask id, and decode() renders them back verbatim.
inline constexpr const char* kEosPiece = "<|endoftext|>";
inline constexpr const char* kMaskPiece = "<|mask|>";
inline constexpr const char* kPadPiece = "<|pad|>";

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  virtual std::vector<int32_t> encode(const std::string& text) const = 0;
  // HF's encode(text, add_special_tokens): false leaves out the post-processor's template
  // tokens (BOS/EOS). Tokenizers without a template ignore the flag.
  virtual std::vector<int32_t> encode(const std::string& text, bool add_special_tokens) const {
    return encode(text);
  }
  // Ids the tokenizer has no token for (outside [0, vocab_size), or a hole in it) are left out,
  // as Hugging Face tokenizers' decode does: a model's vocabulary is often padded past its
  // tokenizer's, and a sampled padding id must not fail a whole answer. id_to_piece throws
  // std::out_of_range for them.
  virtual std::string decode(const std::vector<int32_t>& ids) const = 0;
  virtual int64_t vocab_size() const = 0;
  virtual int32_t mask_id() const = 0;
  virtual int32_t eos_id() const = 0;
  virtual int32_t pad_id() const = 0;
  virtual std::string id_to_piece(int32_t id) const = 0;
  // The id of a piece (added/special tokens included); -1 if the vocabulary lacks it.
  virtual int32_t piece_to_id(const std::string& piece) const = 0;
};

// Loads a tokenizer from a model directory or from a direct file path. In a directory the
// first match wins: tokenizer.json (Hugging Face BPE), vocab.json + merges.txt (GPT-2 style),
// tokenizer.model (SentencePiece). Missing/corrupt -> UserError. A Hugging Face tokenizer
// without a <|mask|> piece (and no mask_token_id in config.json) has mask_id() == -1.
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& model_dir_or_file);

// Whether the tokenizer has a token for `id` (in range and not a hole); decode leaves out the rest.
bool has_token(const Tokenizer& tok, int64_t id);
// How many of `ids` the tokenizer has no token for: for a warning.
int64_t count_missing_ids(const Tokenizer& tok, const std::vector<int32_t>& ids);

// SentencePiece BPE with byte fallback (any UTF-8 text encodes without <unk>).
// Trained ids: 0 = <unk>, 1 = <|endoftext|>, 2 = <|mask|>, 3 = <|pad|>, 4..259 = bytes.
// decode() renders the specials as their text (so masks stay visible); byte pieces that do not
// form valid UTF-8 come out as U+FFFD.
class SpmTokenizer : public Tokenizer {
 public:
  // Trains a model on `texts` (split into lines; empty lines dropped) and writes it to
  // out_model_path. Deterministic for fixed inputs and seed. Bad settings -> UserError.
  static void train(const std::vector<std::string>& texts, int vocab_size,
                    const std::string& out_model_path, uint64_t seed);
  // The specials are looked up by piece: a model without <|mask|> or <|endoftext|> is rejected;
  // a missing <|pad|> falls back to eos.
  static std::unique_ptr<SpmTokenizer> load(const std::string& path);

  ~SpmTokenizer() override;
  using Tokenizer::encode;
  std::vector<int32_t> encode(const std::string& text) const override;
  std::string decode(const std::vector<int32_t>& ids) const override;
  int64_t vocab_size() const override;
  int32_t mask_id() const override { return mask_id_; }
  int32_t eos_id() const override { return eos_id_; }
  int32_t pad_id() const override { return pad_id_; }
  std::string id_to_piece(int32_t id) const override;
  int32_t piece_to_id(const std::string& piece) const override;
  const std::string& path() const { return path_; }

 private:
  SpmTokenizer() = default;
  void check_id(int32_t id) const;

  EcdlmSpm* sp_ = nullptr;  // owned; SentencePiece lives in a dlopen'ed module (spm_api.h)
  int64_t size_ = 0;
  std::string path_;
  int32_t mask_id_ = -1;
  int32_t eos_id_ = -1;
  int32_t pad_id_ = -1;
};

}  // namespace ecdlm::text
