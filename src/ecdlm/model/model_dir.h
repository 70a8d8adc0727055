// What a model directory holds, read without building the model: the weights' stored dtype, the
// expert layout of the file, the tokenizer files, and the special ids the decoders use. Shared by
// `info` and the inference commands, so both report the same thing.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "ecdlm/io/safetensors.h"
#include "ecdlm/model/config.h"

namespace ecdlm {
namespace text {
class Tokenizer;
}

// The float dtype holding most weight elements ("F32", "BF16", "F16"); "" when there is none.
std::string stored_weight_dtype(const io::SafetensorsSet& st);

// Bytes of float tensors stored in a dtype other than `target`, per stored dtype name ("BF16" ->
// bytes in the file): what loading in `target` converts.
std::map<std::string, int64_t> conversion_bytes(const io::SafetensorsSet& st, torch::ScalarType target);
// Bytes of float tensors stored in `target` itself (quantized weights' scales and minimums
// excluded): what a mapped load in `target` uses in place, and what --mmap off copies.
int64_t in_place_bytes(const io::SafetensorsSet& st, torch::ScalarType target);
// Bytes of quantized weights (codes, scales, minimums): about what their repacked copies take.
int64_t packed_bytes(const io::SafetensorsSet& st);

// How the file stores routed experts: "per-expert" (HF: mlp.experts.E.{gate,up,down}_proj.weight),
// "stacked" (ecdlm convert --layout stacked: mlp.experts.{gate,up,down}_proj) or "none".
std::string expert_file_layout(const io::SafetensorsSet& st);

// Tokenizer files present in `dir`, the one load_tokenizer uses first.
std::vector<std::string> tokenizer_files(const std::string& dir);

struct SpecialId {
  int64_t id = -1;
  std::string source;  // e.g. "config.json mask_token_id"; "" when not found
};

// The mask id the decoders use: config.json mask_token_id, else generation_config.json
// mask_token_id (LLaDA2.0-mini keeps it there), else the tokenizer's <|mask|> (`tok`, or the
// directory's tokenizer when null). UserError naming the file and key for an id outside the vocabulary.
SpecialId resolve_mask_id(const std::string& dir, const ModelConfig& cfg, const text::Tokenizer* tok = nullptr);

// resolve_mask_id, or `override_id` (a --mask-id flag) when >= 0; no id at all -> UserError naming
// config.json's mask_token_id and the ways to give one.
SpecialId require_mask_id(const std::string& dir, const ModelConfig& cfg, const text::Tokenizer* tok,
                          int64_t override_id = -1);

// UserError naming `source` (the tokenizer's file or directory) when the tokenizer has more
// pieces than the model's vocabulary; an info line when it has fewer (decode leaves such ids out).
void check_tokenizer_fits(const text::Tokenizer& tok, const ModelConfig& cfg, const std::string& source);

// The EOS id both decoders stop at by default: config.json eos_token_id, else (LLaDA2) its
// pad_token_id; -1 with an empty source when the config has neither.
SpecialId resolve_eos_id(const std::string& dir, const ModelConfig& cfg);

}  // namespace ecdlm
