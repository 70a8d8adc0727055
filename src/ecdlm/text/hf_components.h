// The pipeline stages of a Hugging Face tokenizer.json: normalizers, pre-tokenizers,
// post-processors and decoders. Each is built from its JSON node; an unknown "type" or a
// malformed field is a UserError naming the file and the JSON path.
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "ecdlm/text/regex.h"

namespace ecdlm::text::hf {

// Where a node comes from, for error messages.
struct Src {
  std::string file;
  std::string path;
  Src at(const std::string& key) const { return {file, path.empty() ? key : path + "." + key}; }
  Src at(size_t i) const { return {file, path + "[" + std::to_string(i) + "]"}; }
  [[noreturn]] void fail(const std::string& problem, const std::string& fix = "") const;
};

// Typed field access: a missing required field or a wrong JSON type is a UserError.
const nlohmann::json& field(const nlohmann::json& j, const char* key, const Src& src);
std::string get_string(const nlohmann::json& j, const char* key, const Src& src);
bool get_bool(const nlohmann::json& j, const char* key, bool dflt, const Src& src);
int64_t get_int(const nlohmann::json& j, const char* key, const Src& src);
std::string node_type(const nlohmann::json& j, const Src& src);  // the "type" field

// {"String": "..."} or {"Regex": "..."} as a compiled regex; nullptr for an empty literal.
std::shared_ptr<Regex> make_pattern(const nlohmann::json& j, const Src& src);

// ---- Normalizers: rewrite a whole (valid UTF-8) string ----
class Normalizer {
 public:
  virtual ~Normalizer() = default;
  virtual void apply(std::string& s) const = 0;
};
// Null JSON -> nullptr (no normalizer).
std::unique_ptr<Normalizer> make_normalizer(const nlohmann::json& j, const Src& src);

// ---- Pre-tokenizers: split a string into pieces ----
// Pieces are views into the caller's text or into `owned` (rewritten pieces).
struct Pieces {
  std::vector<std::string_view> v;
  std::deque<std::string> owned;
  std::vector<std::string_view> scratch;
  std::vector<std::pair<size_t, size_t>> matches;
  void clear() { v.clear(); owned.clear(); }
};
class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  virtual void apply(Pieces& p) const = 0;
};
// Flattens Sequence nodes into `out`. `byte_mode` is set when the last stage is ByteLevel:
// that stage then leaves the bytes raw and the model maps them (same result, no copy).
void make_pre_tokenizers(const nlohmann::json& j, const Src& src,
                         std::vector<std::unique_ptr<PreTokenizer>>& out, bool& byte_mode);

// ---- Post-processors: add the template's special tokens ----
class PostProcessor {
 public:
  virtual ~PostProcessor() = default;
  virtual void apply(std::vector<int32_t>& ids, bool add_special_tokens) const = 0;
};
std::unique_ptr<PostProcessor> make_post_processor(const nlohmann::json& j, const Src& src);

// ---- Decoders: token strings -> text pieces (decode_chain), joined at the end ----
class Decoder {
 public:
  virtual ~Decoder() = default;
  virtual void decode_chain(std::vector<std::string>& tokens) const = 0;
};
std::unique_ptr<Decoder> make_decoder(const nlohmann::json& j, const Src& src);

// The GPT-2 pre-tokenizer regex that ByteLevel(use_regex=true) applies.
extern const char* const kGpt2Pattern;

}  // namespace ecdlm::text::hf
