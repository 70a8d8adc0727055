// Model directories: config.json + model.safetensors (HF per-expert layout, or sharded via
// model.safetensors.index.json) + tokenizer files. The arch adapter is only a name map.
#pragma once
#include <string>
#include <utility>
#include <vector>

#include "ecdlm/io/safetensors.h"
#include "ecdlm/model/moe_dlm.h"

namespace ecdlm {

// Tensors in the checkpoint layout of cfg.arch (experts split per expert), in a stable order.
std::vector<std::pair<std::string, torch::Tensor>> export_tensors(MoeDlm& model);

struct LoadOptions {
  // Storage and compute dtype of the weights (f32 or bf16). The router, norms, attention softmax,
  // the MoE weighted sum and the logits compute in f32 whatever this is.
  torch::ScalarType dtype = torch::kFloat32;
  // Inference: a tensor stored in `dtype` is used in place from the read-only mmap (parameters
  // must then never be written), and routed experts are bound one slice per expert, so an expert
  // never routed to is never paged in. Off: every tensor is copied into fresh parameters.
  bool map_weights = false;
  // With map_weights: tensors stored in `dtype` are copied into process memory at load instead of
  // used in place (experts still one tensor per expert; packed quantized weights stay mapped, their
  // output-lane copies are process memory already). Reads the whole file once; then a step streams
  // anonymous memory, not page-cache pages faulted in one 4 KB page at a time.
  bool copy_weights = false;
};

struct LoadStats {
  int64_t mapped_bytes = 0;   // used in place from the mapping
  int64_t copied_bytes = 0;   // converted or fused into fresh memory
  bool stacked_experts = false;  // the file stores experts stacked (ecdlm convert --layout stacked)
  bool quantized = false;        // some weights are packed (ecdlm convert --quantize), mapped as they are
};

// Loads every tensor the model needs from `st`, per-expert or stacked expert layout; UserError
// names the file and tensor for a missing tensor, a wrong shape or an unsupported dtype, and the
// config field when the file holds more experts than num_experts. Returns the unused tensors.
std::vector<std::string> load_weights(MoeDlm& model, const io::SafetensorsSet& st,
                                      const LoadOptions& opt = {}, LoadStats* stats = nullptr);

// Loads config.json (warning once about unknown keys) and the weights. `cfg_override`, when set,
// replaces the config (used by retrofit: same weights, another router). With map_weights the
// model is built without random init, so nothing but what the checkpoint provides is touched.
MoeDlm load_model(const std::string& dir, const ModelConfig* cfg_override = nullptr,
                  const LoadOptions& opt = {}, LoadStats* stats = nullptr);

// The bytes of weights a mapped model has read so far: every non-expert tensor plus the routed
// experts computed since the last reset (ExpertsImpl::reset_touched). With embedding_rows >= 0
// the embedding table counts only that many rows (the distinct ids looked up), else whole.
int64_t weight_bytes_touched(MoeDlm& model, int64_t embedding_rows = -1);
void reset_touched_experts(MoeDlm& model);

// Writes `dir` atomically: everything goes to a sibling temp dir, which is renamed into place.
// Tokenizer files (tokenizer.model, tokenizer.json, ...) are copied from `tokenizer_dir` if given.
// `extra_files` (name -> content) are written next to the weights.
void save_model_dir(MoeDlm& model, const std::string& dir, const std::string& tokenizer_dir = "",
                    const std::vector<std::pair<std::string, std::string>>& extra_files = {});

// Atomically replaces `dir` by `tmp_dir` (rename; the old dir is removed afterwards).
void commit_dir(const std::string& tmp_dir, const std::string& dir);

}  // namespace ecdlm
