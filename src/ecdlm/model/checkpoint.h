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

// Copies every tensor the model needs from `st`; UserError names the file and tensor for a missing
// tensor or wrong shape. Tensors in the file that the model does not use are returned.
std::vector<std::string> load_weights(MoeDlm& model, const io::SafetensorsSet& st);

// Loads config.json (warning once about unknown keys) and the weights. `cfg_override`, when set,
// replaces the config (used by retrofit: same weights, another router).
MoeDlm load_model(const std::string& dir, const ModelConfig* cfg_override = nullptr);

// Writes `dir` atomically: everything goes to a sibling temp dir, which is renamed into place.
// Tokenizer files (tokenizer.model, tokenizer.json, ...) are copied from `tokenizer_dir` if given.
// `extra_files` (name -> content) are written next to the weights.
void save_model_dir(MoeDlm& model, const std::string& dir, const std::string& tokenizer_dir = "",
                    const std::vector<std::pair<std::string, std::string>>& extra_files = {});

// Atomically replaces `dir` by `tmp_dir` (rename; the old dir is removed afterwards).
void commit_dir(const std::string& tmp_dir, const std::string& dir);

}  // namespace ecdlm
