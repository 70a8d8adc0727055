// Hugging Face byte-level BPE tokenizers: tokenizer.json (or vocab.json + merges.txt), encoded
// exactly as the Rust `tokenizers` library does (tests/tokenizer/ checks this against it).
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "ecdlm/text/bpe.h"
#include "ecdlm/text/hf_components.h"
#include "ecdlm/text/tokenizer.h"

namespace ecdlm::text {

struct AddedToken {
  std::string content;
  int32_t id = -1;
  bool special = false, single_word = false, lstrip = false, rstrip = false, normalized = true;
};

// Finds added tokens in text: leftmost match first, longest at that position, then HF's
// single_word / lstrip / rstrip rules.
class AddedTokenMatcher {
 public:
  // `patterns[i]` is what is searched for token i (its content, normalized if it is).
  void build(const std::vector<const AddedToken*>& tokens, const std::vector<std::string>& patterns);
  bool empty() const { return tokens_.empty(); }
  struct Split {
    size_t b, e;
    int32_t id;  // -1: ordinary text
  };
  void split(std::string_view text, std::vector<Split>& out) const;

 private:
  std::vector<const AddedToken*> tokens_;
  std::vector<std::string> patterns_;
  std::vector<std::vector<uint32_t>> by_first_byte_;  // indices, longest pattern first
};

class HfTokenizer : public Tokenizer {
 public:
  // tokenizer.json. Special ids come from config.json / tokenizer_config.json next to it if
  // present (eos_token_id, pad_token_id, mask_token_id), else from the pieces
  // <|endoftext|> / <|mask|>. Errors: UserError naming the file and JSON path.
  static std::unique_ptr<HfTokenizer> load_json(const std::string& path);
  // The same from memory; `name` is used in errors, config files are read from `config_dir`
  // (none if empty).
  static std::unique_ptr<HfTokenizer> load_json_text(std::string_view text, const std::string& name,
                                                     const std::string& config_dir = "");
  // GPT-2 style vocab.json + merges.txt (ByteLevel pre-tokenizer and decoder; the tokens of an
  // added_tokens.json beside them and <|endoftext|> are special).
  static std::unique_ptr<HfTokenizer> load_vocab_merges(const std::string& vocab_json, const std::string& merges_txt);

  using Tokenizer::encode;
  std::vector<int32_t> encode(const std::string& text) const override { return encode(text, true); }
  std::vector<int32_t> encode(const std::string& text, bool add_special_tokens) const override;
  // HF decode(ids, skip_special_tokens=false); ids without a token are left out, as HF does.
  std::string decode(const std::vector<int32_t>& ids) const override;
  int64_t vocab_size() const override { return vocab_size_; }
  int32_t mask_id() const override { return mask_id_; }
  int32_t eos_id() const override { return eos_id_; }
  int32_t pad_id() const override { return pad_id_; }
  std::string id_to_piece(int32_t id) const override;
  int32_t piece_to_id(const std::string& piece) const override;
  const std::vector<AddedToken>& added_tokens() const { return added_; }
  const std::string& path() const { return path_; }

 private:
  explicit HfTokenizer(BpeModel::Options o) : model_(std::move(o)) {}
  void finish(const std::string& config_dir);  // matchers, vocab size, special ids
  void encode_text(std::string_view text, std::vector<int32_t>& ids) const;
  void encode_normalized(std::string_view text, std::vector<int32_t>& ids) const;
  void resolve_special_ids(const std::string& dir);
  const AddedToken* added_by_id(int32_t id) const;

  std::string path_;
  BpeModel model_;
  std::unique_ptr<hf::Normalizer> normalizer_;
  std::vector<std::unique_ptr<hf::PreTokenizer>> pre_;
  bool byte_mode_ = false;
  std::unique_ptr<hf::PostProcessor> post_;
  std::unique_ptr<hf::Decoder> decoder_;
  std::vector<AddedToken> added_;
  std::vector<int32_t> added_index_;  // id -> index into added_ (-1 if none), sized vocab_size_
  AddedTokenMatcher raw_matcher_, norm_matcher_;
  int64_t vocab_size_ = 0;
  int32_t mask_id_ = -1, eos_id_ = -1, pad_id_ = -1;
};

}  // namespace ecdlm::text
