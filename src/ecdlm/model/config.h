// Model hyper-parameters, read from and written to an HF-style config.json.
// Our own models use the `llada2_moe` key set plus explicit `moe_*` router fields.
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "ecdlm/moe/moe_config.h"

namespace ecdlm {

enum class Arch : int { kLlada2Moe = 0, kLladaMoe = 1 };
// The router enums belong to the MoE unit (moe/moe_config.h).
using moe::RouterType;
using ScoreFunction = moe::ScoreFn;

struct ModelConfig {
  Arch arch = Arch::kLlada2Moe;
  int64_t vocab_size = 8192;
  int64_t hidden_size = 256;
  int64_t num_hidden_layers = 4;
  int64_t num_attention_heads = 4;
  int64_t num_key_value_heads = 4;
  int64_t head_dim = 64;
  int64_t intermediate_size = 512;       // dense SwiGLU layers
  int64_t first_k_dense_replace = 0;     // layers [0, k) are dense
  int64_t num_experts = 32;
  int64_t num_experts_per_tok = 2;       // TC top-k; EC average experts per token (capacity k)
  int64_t moe_intermediate_size = 128;
  int64_t n_group = 1;                   // group-limited routing (DeepSeek/LLaDA2)
  int64_t topk_group = 1;
  double routed_scaling_factor = 1.0;
  bool norm_topk_prob = true;
  ScoreFunction score_function = ScoreFunction::kSoftmax;
  bool moe_router_enable_expert_bias = false;
  bool expert_bias_in_gate = false;      // LLaDA-MoE quirk: the bias also changes the mixing weights
  double rope_theta = 10000.0;
  double partial_rotary_factor = 1.0;
  double rms_norm_eps = 1e-6;
  bool use_qk_norm = true;
  int64_t max_position_embeddings = 4096;
  bool tie_word_embeddings = false;
  int64_t mask_token_id = -1;
  int64_t eos_token_id = -1;
  int64_t pad_token_id = -1;

  // ecdlm router fields (not in the LLaDA2 key set; ignored by LLaDA2 tooling).
  RouterType router_type = RouterType::kTokenChoice;
  double moe_capacity_factor = 0.0;      // TC: 0 = dropless
  double moe_aux_loss_coeff = 0.0;       // TC Switch load-balancing loss
  double moe_z_loss_coeff = 1e-3;
  double moe_loss_free_bias_rate = 0.0;  // TC loss-free balancing (arXiv 2408.15664); >0 enables
  bool moe_enable_scaling_factor = true; // EC: phi(n) norm matching; TC: constant factor
  std::string moe_capacity_schedule = "static";  // EC capacity k(r)
  double moe_capacity_k_min = 0.0;       // for non-static schedules (0 = num_experts_per_tok)
  double moe_capacity_k_max = 0.0;
  double moe_capacity_gaussian_sigma = 0.22;
  // dMoE checkpoints (config keys "mode", "core_threshold"): block routing is their default.
  bool ecdlm_native = false;             // written by ecdlm (has moe_router_type): bidirectional training
  std::string dmoe_mode;                 // "aggregate" = dMoE block-coreset routing
  double dmoe_core_threshold = 0.0;      // top-p of the coreset (0 = not set)

  int64_t rotary_dim() const;
  int64_t shared_expert_intermediate_size = 128;  // 0 = no shared expert (LLaDA2: moe_inter * n_shared)
  bool is_moe_layer(int64_t layer) const { return layer >= first_k_dense_replace; }
  int64_t num_moe_layers() const;

  // Throws UserError naming `source` and the field for inconsistent values.
  void validate(const std::string& source) const;

  // Parses llada2_moe / llada ("LLaDA-MoE") / ecdlm keys. Unknown keys are reported via `unknown`.
  static ModelConfig from_json(const nlohmann::json& j, const std::string& source,
                               std::vector<std::string>* unknown = nullptr);
  // config.json or a directory holding it; warns once about keys ecdlm does not use.
  static ModelConfig load(const std::string& path);
  nlohmann::json to_json() const;
  void save(const std::string& path) const;          // atomic
};

std::string to_string(RouterType t);
std::string to_string(Arch a);

// The MoE layers' config: the fields of `c` a router, the experts and the capacity policy read.
moe::MoeConfig moe_config_from(const ModelConfig& c);

// For a TC config with norm matching on and a shared expert, sets routed_scaling_factor to the
// constant factor moe::tc_scaling_factor (it is then stored in config.json); otherwise leaves the
// config alone.
void apply_tc_scaling_factor(ModelConfig& c);

}  // namespace ecdlm
