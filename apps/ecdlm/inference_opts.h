// Inference flags shared by generate, logits, eval and bench generate: routing policy (--moe-*,
// --block-*, --moe-des-*) and how a model is loaded for it (expert choice = a router swap at load time).
#pragma once
#include <CLI/CLI.hpp>

#include <string>
#include <vector>

#include "ecdlm/model/checkpoint.h"
#include "ecdlm/model/moe_dlm.h"
#include "ecdlm/moe/inference_routing.h"

namespace ecdlm::cli {

struct RoutingFlags {
  std::string policy;                 // "" = the model's default (block for dMoE checkpoints)
  double block_top_p = -1;            // < 0: the model's core_threshold, else 0.6
  int64_t block_min_experts = 16;
  int64_t block_chunk = 32;
  int64_t topk_cap = 4;
  double des_s_ratio = 0.65, des_v_threshold = 0.07;  // as moe::InferenceRouting
  int64_t des_min_experts = 0, des_chunk = 32;
  std::vector<CLI::Option*> des_opts;  // to warn when given without a DES policy
  std::string ec_schedule;            // ec on a TC model: capacity schedule (default static)
  double ec_k_min = 0, ec_k_max = 0;
  std::string dtype = "f32";          // --dtype: weight storage / compute type (f32 | bf16)
  std::string kernel = "auto";        // --kernel: auto | amx | avx512 | torch (kernels/small_m.h)

  void add_to(CLI::App* sub);
  // The effective routing for `cfg` (validated; UserError naming the flag).
  moe::InferenceRouting resolve(const ModelConfig& cfg) const;
};

// Loads a model for inference with a routing policy: weights mapped from the checkpoint in --dtype
// (experts bound per expert, so unrouted experts are never read). `ec` turns a token-choice
// checkpoint into expert choice (router swap, gate weights reused, capacity k(r) from
// --moe-capacity-*); others load as is.
MoeDlm load_for_routing(const std::string& dir, const RoutingFlags& f, LoadStats* stats = nullptr);

// "f32" / "bf16" -> dtype; UserError naming --dtype otherwise.
torch::ScalarType parse_dtype(const std::string& s);

// Parses "1,2,3" / "1 2 3" into ids; UserError naming `flag` otherwise.
std::vector<int64_t> parse_ids(const std::string& s, const std::string& flag);

}  // namespace ecdlm::cli
