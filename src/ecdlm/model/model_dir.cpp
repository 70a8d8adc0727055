#include "ecdlm/model/model_dir.h"

#include <filesystem>
#include <memory>

#include "ecdlm/text/tokenizer.h"
#include "ecdlm/util/error.h"
#include "ecdlm/util/fs.h"
#include "ecdlm/util/log.h"
#include "ecdlm/util/strings.h"

namespace ecdlm {
namespace fs = std::filesystem;

namespace {

bool is_float(io::DType d) { return d == io::DType::F32 || d == io::DType::BF16 || d == io::DType::F16; }

bool has_file(const std::string& dir, const std::string& name) {
  std::error_code ec;
  return fs::is_regular_file(fs::path(dir) / name, ec);
}

// A float weight (quantized weights' f16 scales and minimums are float too, and no weight).
bool float_weight(const std::string& name, const io::TensorInfo& t) {
  return is_float(t.dtype) && !ends_with(name, ".scales") && !ends_with(name, ".mins");
}

}  // namespace

std::string stored_weight_dtype(const io::SafetensorsSet& st) {
  std::map<std::string, int64_t> elements;
  for (const auto& name : st.names()) {
    const auto& t = st.info(name);
    if (float_weight(name, t))
      elements[io::dtype_name(t.dtype)] += t.numel();
  }
  std::string best;
  int64_t most = -1;
  for (const auto& [d, n] : elements)
    if (n > most) best = d, most = n;
  return best;
}

std::map<std::string, int64_t> conversion_bytes(const io::SafetensorsSet& st, torch::ScalarType target) {
  std::map<std::string, int64_t> out;
  for (const auto& name : st.names()) {
    const auto& t = st.info(name);
    if (float_weight(name, t) && io::dtype_to_torch(t.dtype) != target)
      out[io::dtype_name(t.dtype)] += static_cast<int64_t>(t.nbytes());
  }
  return out;
}

int64_t packed_bytes(const io::SafetensorsSet& st) {
  int64_t n = 0;
  for (const auto& name : st.names())
    if (ends_with(name, ".qweight") || ends_with(name, ".scales") || ends_with(name, ".mins"))
      n += static_cast<int64_t>(st.info(name).nbytes());
  return n;
}

int64_t in_place_bytes(const io::SafetensorsSet& st, torch::ScalarType target) {
  int64_t n = 0;
  for (const auto& name : st.names()) {
    const auto& t = st.info(name);
    if (float_weight(name, t) && io::dtype_to_torch(t.dtype) == target) n += static_cast<int64_t>(t.nbytes());
  }
  return n;
}

std::string expert_file_layout(const io::SafetensorsSet& st) {
  for (const auto& name : st.names()) {
    const auto pos = name.find(".mlp.experts.");
    if (pos == std::string::npos) continue;
    const char c = name[pos + 13];
    return c >= '0' && c <= '9' ? "per-expert" : "stacked";
  }
  return "none";
}

std::vector<std::string> tokenizer_files(const std::string& dir) {
  std::vector<std::string> out;
  // load_tokenizer's order first: tokenizer.json, vocab.json (+ merges.txt), tokenizer.model.
  for (const char* f : {"tokenizer.json", "vocab.json", "merges.txt", "tokenizer.model", "tokenizer_config.json"})
    if (has_file(dir, f)) out.push_back(f);
  return out;
}

SpecialId resolve_mask_id(const std::string& dir, const ModelConfig& cfg, const text::Tokenizer* tok) {
  if (cfg.mask_token_id >= 0) return {cfg.mask_token_id, "config.json mask_token_id"};
  if (has_file(dir, "generation_config.json")) {
    const auto path = (fs::path(dir) / "generation_config.json").string();
    const auto j = read_json_file(path);
    if (j.is_object() && j.contains("mask_token_id") && !j["mask_token_id"].is_null()) {
      const auto& v = j["mask_token_id"];
      if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() >= cfg.vocab_size)
        fail(path, "mask_token_id", "expected a token id in [0, " + std::to_string(cfg.vocab_size) + "), got " + v.dump(),
             "fix the file, or set mask_token_id in config.json");
      return {v.get<int64_t>(), "generation_config.json mask_token_id"};
    }
  }
  std::unique_ptr<text::Tokenizer> own;
  if (!tok) {
    try {
      own = text::load_tokenizer(dir);
    } catch (const UserError&) {  // no (readable) tokenizer: the caller reports a missing mask id
    }
    tok = own.get();
  }
  if (tok && tok->mask_id() >= 0 && tok->mask_id() < cfg.vocab_size) return {tok->mask_id(), "tokenizer <|mask|>"};
  return {};
}

SpecialId require_mask_id(const std::string& dir, const ModelConfig& cfg, const text::Tokenizer* tok,
                          int64_t override_id) {
  if (override_id >= 0) return {override_id, "--mask-id"};
  auto m = resolve_mask_id(dir, cfg, tok);
  if (m.id < 0)
    fail((fs::path(dir) / "config.json").string(), "mask_token_id", "the model has no mask token id",
         "set mask_token_id (config.json or generation_config.json), pass --mask-id, or give a tokenizer that has <|mask|>");
  return m;
}

void check_tokenizer_fits(const text::Tokenizer& tok, const ModelConfig& cfg, const std::string& source) {
  if (tok.vocab_size() > cfg.vocab_size)
    fail(source, "vocab_size",
         "tokenizer has " + std::to_string(tok.vocab_size()) + " pieces but the model only " + std::to_string(cfg.vocab_size),
         "use the tokenizer the model was trained with");
  if (tok.vocab_size() < cfg.vocab_size)  // common: embeddings padded to a round size
    LOG_INFO("tokenizer " << source << ": " << tok.vocab_size() << " pieces for the model's " << cfg.vocab_size
                          << " ids; an id past them is left out of the text (as Hugging Face decode does)");
}

SpecialId resolve_eos_id(const std::string& dir, const ModelConfig& cfg) {
  if (cfg.eos_token_id < 0) return {};
  const auto path = fs::is_directory(dir) ? (fs::path(dir) / "config.json").string() : dir;
  const auto j = read_json_file(path);
  const bool own = j.is_object() && j.contains("eos_token_id") && j["eos_token_id"].is_number_integer();
  return {cfg.eos_token_id, own ? "config.json eos_token_id" : "config.json pad_token_id"};
}

}  // namespace ecdlm
