// config.json against the checkpoint header, before a model is built (load_model, info, export).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "ecdlm/io/safetensors.h"
#include "ecdlm/model/config.h"

namespace ecdlm {

// One tensor a config implies, by internal (llada2_moe) name, as MoeDlm(cfg) registers it (routed
// experts stacked [E, F, D]). keys[i] names the config key(s) and value(s) behind dim i, and
// exists_because the key that makes the tensor exist at all ("" for always present).
struct ExpectedTensor {
  std::string name;
  std::vector<int64_t> shape;
  std::vector<std::string> keys;
  std::string exists_because;
  bool buffer = false;
};
std::vector<ExpectedTensor> expected_tensors(const ModelConfig& cfg);

// Checks the config against the checkpoint header (every tensor's name, shape and dtype, per-expert
// or stacked, LLaDA2 or LLaDA-MoE names) without allocating anything. UserError names `cfg_path`,
// the key and its value, the tensor and both shapes.
void check_checkpoint_header(const ModelConfig& cfg, const io::SafetensorsSet& st, const std::string& cfg_path);

// Parameters (and buffers) of MoeDlm(cfg) from the config alone, in double: no overflow and no
// allocation for a config of 10^9 experts.
double expected_parameters(const ModelConfig& cfg);

// UserError naming `source` when `bytes_per_param` bytes per parameter (`what` says for what)
// exceed this machine's memory: a clear refusal instead of std::bad_alloc mid-construction.
void check_model_fits_memory(const ModelConfig& cfg, const std::string& source, double bytes_per_param,
                             const std::string& what);

// The LLaDA-MoE checkpoint name of an internal tensor name (q/k/v are split separately).
std::string llada_moe_checkpoint_name(const std::string& internal_name);

}  // namespace ecdlm
