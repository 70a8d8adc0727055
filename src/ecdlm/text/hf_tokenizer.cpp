#include "ecdlm/text/hf_tokenizer.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>

#include "ecdlm/text/unicode.h"

namespace ecdlm::text {

// ---- AddedTokenMatcher ----

void AddedTokenMatcher::build(const std::vector<const AddedToken*>& tokens, const std::vector<std::string>& patterns) {
  tokens_ = tokens;
  patterns_ = patterns;
  by_first_byte_.assign(256, {});
  for (uint32_t i = 0; i < tokens_.size(); ++i)
    if (!patterns_[i].empty()) by_first_byte_[static_cast<unsigned char>(patterns_[i][0])].push_back(i);
  for (auto& b : by_first_byte_)
    std::stable_sort(b.begin(), b.end(), [&](uint32_t x, uint32_t y) { return patterns_[x].size() > patterns_[y].size(); });
}

void AddedTokenMatcher::split(std::string_view s, std::vector<Split>& out) const {
  size_t start_offset = 0;
  size_t pos = 0;
  while (pos < s.size()) {
    // Leftmost position with a match, longest pattern there.
    int32_t hit = -1;
    size_t mb = 0;
    for (; pos < s.size(); ++pos) {
      const auto& cand = by_first_byte_[static_cast<unsigned char>(s[pos])];
      for (uint32_t i : cand) {
        const std::string& p = patterns_[i];
        if (p.size() <= s.size() - pos && std::memcmp(s.data() + pos, p.data(), p.size()) == 0) {
          hit = static_cast<int32_t>(i);
          break;
        }
      }
      if (hit >= 0) {
        mb = pos;
        break;
      }
    }
    if (hit < 0) break;
    const AddedToken& tok = *tokens_[static_cast<size_t>(hit)];
    size_t b = mb, e = mb + patterns_[static_cast<size_t>(hit)].size();
    pos = e;  // the search resumes after the raw match, whatever happens below
    if (tok.single_word) {
      const bool space_before = b == 0 || !uni::ends_with_word_char(s.substr(0, b));
      const bool space_after = e == s.size() || !uni::starts_with_word_char(s.substr(e));
      if (!space_before || !space_after) continue;
    }
    if (tok.lstrip) b = std::max(b - uni::trailing_whitespace_bytes(s.substr(0, b)), start_offset);
    if (tok.rstrip) e += uni::leading_whitespace_bytes(s.substr(e));
    if (start_offset < b) out.push_back({start_offset, b, -1});
    out.push_back({b, e, tok.id});
    start_offset = e;
  }
  if (start_offset < s.size()) out.push_back({start_offset, s.size(), -1});
}

// ---- HfTokenizer: encoding ----

void HfTokenizer::encode_normalized(std::string_view text, std::vector<int32_t>& ids) const {
  thread_local hf::Pieces p;
  thread_local std::vector<AddedTokenMatcher::Split> splits;
  // Nested calls never happen, but the thread-locals are reused across calls: copy the splits.
  splits.clear();
  if (norm_matcher_.empty()) splits.push_back({0, text.size(), -1});
  else norm_matcher_.split(text, splits);
  const std::vector<AddedTokenMatcher::Split> local(splits.begin(), splits.end());
  for (const auto& sp : local) {
    if (sp.id >= 0) {
      ids.push_back(sp.id);
      continue;
    }
    p.clear();
    p.v.push_back(text.substr(sp.b, sp.e - sp.b));
    for (const auto& stage : pre_) stage->apply(p);
    for (std::string_view piece : p.v) model_.tokenize(piece, byte_mode_, ids);
  }
}

void HfTokenizer::encode_text(std::string_view text, std::vector<int32_t>& ids) const {
  std::vector<AddedTokenMatcher::Split> splits;
  if (raw_matcher_.empty()) splits.push_back({0, text.size(), -1});
  else raw_matcher_.split(text, splits);
  std::string norm;
  for (const auto& sp : splits) {
    if (sp.id >= 0) {
      ids.push_back(sp.id);
      continue;
    }
    const std::string_view seg = text.substr(sp.b, sp.e - sp.b);
    if (normalizer_) {
      norm.assign(seg);
      normalizer_->apply(norm);
      encode_normalized(norm, ids);
    } else {
      encode_normalized(seg, ids);
    }
  }
}

std::vector<int32_t> HfTokenizer::encode(const std::string& text, bool add_special_tokens) const {
  if (!uni::is_valid_utf8(text))
    throw std::invalid_argument("text is not valid UTF-8 (byte " + std::to_string(uni::valid_utf8_prefix(text)) + ")");
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  encode_text(text, ids);
  if (post_) post_->apply(ids, add_special_tokens);
  return ids;
}

// ---- HfTokenizer: decoding and lookups ----

const AddedToken* HfTokenizer::added_by_id(int32_t id) const {
  if (id < 0 || id >= static_cast<int32_t>(added_index_.size()) || added_index_[id] < 0) return nullptr;
  return &added_[static_cast<size_t>(added_index_[id])];
}

std::string HfTokenizer::id_to_piece(int32_t id) const {
  if (const AddedToken* a = added_by_id(id)) return a->content;
  if (!model_.has_id(id))
    throw std::out_of_range("token id " + std::to_string(id) + " is not in the vocabulary of " + path_ +
                            " (size " + std::to_string(vocab_size_) + ")");
  return std::string(model_.id_to_token(id));
}

int32_t HfTokenizer::piece_to_id(const std::string& piece) const {
  for (const auto& a : added_)
    if (a.content == piece) return a.id;
  return model_.token_to_id(piece);
}

std::string HfTokenizer::decode(const std::vector<int32_t>& ids) const {
  std::vector<std::string> toks;
  toks.reserve(ids.size());
  for (int32_t id : ids) {
    // An id without a token (a model vocabulary padded past the tokenizer's, or a hole) is left
    // out, as HF tokenizers' decode does, instead of failing the whole text.
    if (const AddedToken* a = added_by_id(id)) toks.push_back(a->content);
    else if (model_.has_id(id)) toks.emplace_back(model_.id_to_token(id));
  }
  if (!decoder_) {
    std::string out;
    for (size_t i = 0; i < toks.size(); ++i) {
      if (i) out += ' ';
      out += toks[i];
    }
    return out;
  }
  decoder_->decode_chain(toks);
  std::string out;
  for (const auto& t : toks) out += t;
  return out;
}

}  // namespace ecdlm::text
