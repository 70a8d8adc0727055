// A tokenizer for the serve tests' tiny models: ids [0, pieces) map to the given pieces, the last
// vocabulary id is the mask and the one before it EOS (and pad), as test::small_tc_config has them.
// Text encodes byte by byte onto the first `encode_ids` ids; decode joins the pieces and makes
// what is not UTF-8 into U+FFFD, as Hugging Face's decode does (ids without a piece left out).
#pragma once
#include <string>
#include <vector>

#include "ecdlm/text/tokenizer.h"
#include "ecdlm/text/unicode.h"

namespace ecdlm::test {

class PieceTokenizer : public text::Tokenizer {
 public:
  PieceTokenizer(std::vector<std::string> pieces, int64_t vocab, int32_t encode_ids)
      : pieces_(std::move(pieces)), vocab_(vocab), encode_ids_(encode_ids) {}
  std::vector<int32_t> encode(const std::string& text) const override {
    std::vector<int32_t> ids;
    for (unsigned char c : text) ids.push_back(static_cast<int32_t>(c % encode_ids_));
    return ids;
  }
  std::string decode(const std::vector<int32_t>& ids) const override {
    std::string raw;
    for (auto id : ids)
      if (id >= 0 && id < static_cast<int32_t>(pieces_.size())) raw += pieces_[static_cast<size_t>(id)];
    return text::uni::from_utf8_lossy(raw);
  }
  int64_t vocab_size() const override { return vocab_; }
  int32_t mask_id() const override { return static_cast<int32_t>(vocab_ - 1); }
  int32_t eos_id() const override { return static_cast<int32_t>(vocab_ - 2); }
  int32_t pad_id() const override { return static_cast<int32_t>(vocab_ - 2); }
  std::string id_to_piece(int32_t id) const override { return decode({id}); }
  int32_t piece_to_id(const std::string&) const override { return -1; }

 private:
  std::vector<std::string> pieces_;
  int64_t vocab_;
  int32_t encode_ids_;
};

}  // namespace ecdlm::test
