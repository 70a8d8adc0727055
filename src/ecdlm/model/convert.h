// Checkpoint tools that stream one tensor at a time, so models bigger than RAM convert fine:
// expert layout / dtype conversion, export of ecdlm models for LLaDA2 tooling, random init.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "ecdlm/io/safetensors.h"
#include "ecdlm/model/config.h"
#include "ecdlm/model/quantize.h"

namespace ecdlm {

struct RoutingInit;  // model/init.h

// per-expert: HF layout, `mlp.experts.<e>.<proj>.weight` [F, D] (what HF tooling reads).
// stacked: ecdlm's `mlp.experts.<proj>` [E, F, D] (one tensor per projection and layer; the
// mapped loader then binds a model without per-expert bookkeeping).
enum class ExpertLayout { kPerExpert, kStacked };
ExpertLayout parse_expert_layout(const std::string& s);  // "per-expert" | "stacked"

struct ConvertParams {
  ExpertLayout layout = ExpertLayout::kPerExpert;
  std::string dtype = "keep";                     // keep | f32 | bf16 | f16 (floating tensors)
  uint64_t max_shard_bytes = 5ull << 30;          // HF's default shard size
  QuantizeParams quantize;                        // format "" = keep the weights as they are
};

struct ConvertReport {
  int64_t tensors_in = 0, tensors_out = 0;
  uint64_t bytes_out = 0;
  int64_t expert_groups = 0;  // (layer, projection) pairs re-laid out
  int64_t quantized = 0;      // weights packed by --quantize
  std::vector<std::string> not_quantized;  // selected, but K is not a multiple of the group: kept
};

// Rewrites the weights of model dir `src` into `dst` (created atomically; other files such as
// config.json and tokenizer files are copied, config's torch_dtype updated). With p.quantize the
// selected linear weights are packed (model/quantize.h) and config.json gets a `quantization`
// block. A quantized `src` is refused (convert the bf16 original).
ConvertReport convert_checkpoint(const std::string& src, const std::string& dst, const ConvertParams& p);

struct ExportParams {
  std::string dtype = "bf16";               // f32 | bf16 (LLaDA2 checkpoints ship bf16)
  uint64_t max_shard_bytes = 5ull << 30;
  bool allow_mismatch = false;              // write even where LLaDA2's code computes differently
};

// Differences between what the official LLaDA2 modeling code computes for `c` and what ecdlm
// computes (it always uses sigmoid scores + expert_bias, top-k renormalization, a block-causal
// mask, no capacity limit, a token-choice router). Empty when an export is exact.
std::vector<std::string> llada2_export_mismatches(const ModelConfig& c);

// The config.json LLaDA2 tooling expects (its key set only) for `c`.
nlohmann::json llada2_config_json(const ModelConfig& c, const std::string& torch_dtype);

// Writes an ecdlm model dir as an LLaDA2 HF directory (llada2_moe config key set, per-expert
// tensors, expert_bias present, sharded bf16). UserError listing every mismatch unless allowed.
ConvertReport export_llada2(const std::string& src, const std::string& dst, const ExportParams& p);

// A randomly initialized model dir for `cfg` (N(0, 0.02), output projections / sqrt(2 layers),
// norms 1, expert_bias 0), generated tensor by tensor: memory stays at one tensor.
// `raw_config`, when given, is written as config.json (an HF config stays byte-for-byte its key
// set, torch_dtype updated); otherwise cfg's own JSON. `routing`, when given, replaces the
// embeddings, router weights and expert biases by that recipe (model/init.h).
ConvertReport init_checkpoint(const ModelConfig& cfg, const std::string& dst, const std::string& dtype,
                              uint64_t seed, uint64_t max_shard_bytes = 5ull << 30,
                              const nlohmann::json* raw_config = nullptr, const RoutingInit* routing = nullptr);

}  // namespace ecdlm
